"""The one instance palette (viewer, label-map previews, the instance table)."""

from protosaga_core.palette import instance_color


def test_instance_colours_are_distinct_and_deterministic():
    colours = [instance_color(i) for i in range(1, 2001)]
    assert len(set(colours)) == len(colours)
    assert instance_color(17) == instance_color(17)
    assert all(0 <= c <= 255 for colour in colours for c in colour)
