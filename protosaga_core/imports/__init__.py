"""Scenes trained elsewhere (`protosaga import`): inria.py reads the INRIA code's output folders,
alignment.py checks that the Gaussians sit where the dataset's cameras look, importer.py makes the scene."""
