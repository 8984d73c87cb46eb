"""Splat PLY reading and writing: exact round trips, the INRIA layout, rejection of bad files, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch
from builders import random_gaussians

from protosaga_core.gaussians import Gaussians, num_sh_rest
from protosaga_core.io.ply import PlyFormatError, read_ply, write_features, write_ply

INRIA_PLY = Path(__file__).resolve().parents[2] / "shared" / "data" / "inria_ply" / "point_cloud.ply"


def inria_names(sh_degree: int) -> list[str]:
    rest = [f"f_rest_{i}" for i in range(3 * num_sh_rest(sh_degree))]
    return ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest,
            "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def assert_gaussians_equal(a: Gaussians, b: Gaussians) -> None:
    for name, tensor in a.tensors().items():
        other = getattr(b, name)
        assert other.dtype == torch.float32 and other.device.type == "cpu", name
        assert torch.equal(tensor, other), name


def write_structured(path: Path, vertices: np.ndarray, text: bool = False) -> Path:
    plyfile.PlyData([plyfile.PlyElement.describe(vertices, "vertex")], text=text).write(str(path))
    return path


def inria_vertices(n: int = 5, sh_degree: int = 1, drop: str | None = None, double: str | None = None) -> np.ndarray:
    """A valid INRIA-style structured array, optionally without one property or with one as double."""
    names = [name for name in inria_names(sh_degree) if name != drop]
    dtype = [(name, "<f8" if name == double else "<f4") for name in names]
    vertices = np.zeros(n, dtype=dtype)
    vertices["rot_0"] = 1.0
    return vertices


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
@pytest.mark.parametrize("feature_dim", [0, 16])
@pytest.mark.parametrize("with_ids", [False, True])
def test_round_trip_is_exact(tmp_path: Path, sh_degree: int, feature_dim: int, with_ids: bool) -> None:
    gaussians = random_gaussians(37, sh_degree, feature_dim, seed=sh_degree)
    ids = torch.randint(-1, 2**31 - 1, (37,), generator=torch.Generator().manual_seed(1)) if with_ids else None
    path = tmp_path / "scene.ply"
    write_ply(path, gaussians, instance_ids=ids)
    contents = read_ply(path)
    assert_gaussians_equal(gaussians, contents.gaussians)
    assert contents.gaussians.sh_degree == sh_degree
    if with_ids:
        assert contents.instance_ids.dtype == torch.int64 and torch.equal(contents.instance_ids, ids)
    else:
        assert contents.instance_ids is None
    header = plyfile.PlyData.read(str(path))["vertex"].properties
    expected = inria_names(sh_degree) + [f"feat_{i}" for i in range(feature_dim)] + (["instance"] if with_ids else [])
    assert [p.name for p in header] == expected
    assert header[-1].val_dtype == ("i4" if with_ids else "f4")


def test_write_accepts_grad_and_double_tensors(tmp_path: Path) -> None:
    gaussians = random_gaussians(8, 2, 4).map(lambda t: t.double().requires_grad_())
    write_ply(tmp_path / "g.ply", gaussians)
    assert_gaussians_equal(gaussians.map(lambda t: t.detach().float()), read_ply(tmp_path / "g.ply").gaussians)


def test_f_rest_is_channel_major(tmp_path: Path) -> None:
    gaussians = random_gaussians(3, 1, 0)
    write_ply(tmp_path / "g.ply", gaussians)
    vertices = plyfile.PlyData.read(str(tmp_path / "g.ply"))["vertex"].data
    # f_rest_0..2 are red's three coefficients, f_rest_3 is green's first.
    assert np.array_equal(vertices["f_rest_1"], gaussians.shN[:, 1, 0].numpy())
    assert np.array_equal(vertices["f_rest_3"], gaussians.shN[:, 0, 1].numpy())
    assert np.array_equal(vertices["f_dc_2"], gaussians.sh0[:, 0, 2].numpy())


def test_ascii_file_reads_like_binary(tmp_path: Path) -> None:
    vertices = inria_vertices(sh_degree=2)
    vertices["opacity"] = np.arange(5)
    binary = read_ply(write_structured(tmp_path / "b.ply", vertices)).gaussians
    text = read_ply(write_structured(tmp_path / "t.ply", vertices, text=True)).gaussians
    assert_gaussians_equal(binary, text)


# --- plain (INRIA-only) files --------------------------------------------------------------------


def test_plain_writes_only_inria_columns(tmp_path: Path) -> None:
    gaussians = random_gaussians(11, 3, 16)
    path = tmp_path / "plain.ply"
    write_ply(path, gaussians, plain=True)
    ply = plyfile.PlyData.read(str(path))
    assert [e.name for e in ply.elements] == ["vertex"]
    assert [p.name for p in ply["vertex"].properties] == inria_names(3)
    assert {p.val_dtype for p in ply["vertex"].properties} == {"f4"}
    assert not np.any(ply["vertex"].data["nx"])
    contents = read_ply(path)
    assert contents.gaussians.features.shape == (11, 0)
    assert contents.instance_ids is None
    assert_gaussians_equal(Gaussians(**{**gaussians.tensors(), "features": torch.zeros(11, 0)}), contents.gaussians)


def test_plain_with_instance_ids_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain"):
        ids = torch.zeros(4, dtype=torch.long)
        write_ply(tmp_path / "p.ply", random_gaussians(4, 0, 0), plain=True, instance_ids=ids)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("ids", "problem"),
    [(torch.zeros(3, dtype=torch.long), "shape"), (torch.zeros(4), "integer"), (torch.full((4,), 2**31), "int32")],
)
def test_bad_instance_ids_are_refused(tmp_path: Path, ids: torch.Tensor, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        write_ply(tmp_path / "p.ply", random_gaussians(4, 0, 0), instance_ids=ids)


def test_real_inria_file_round_trips_byte_for_byte(tmp_path: Path) -> None:
    if not INRIA_PLY.exists():
        pytest.skip(f"{INRIA_PLY} is absent")
    contents = read_ply(INRIA_PLY)
    assert len(contents.gaussians) == 9080
    assert contents.gaussians.sh_degree == 3
    assert contents.gaussians.feature_dim == 0
    assert contents.instance_ids is None
    out = tmp_path / "point_cloud.ply"
    write_ply(out, contents.gaussians, plain=True)
    assert out.read_bytes() == INRIA_PLY.read_bytes()


# --- rejection -----------------------------------------------------------------------------------


def assert_rejected(path: Path, *fragments: str) -> None:
    with pytest.raises(PlyFormatError) as caught:
        read_ply(path)
    message = str(caught.value)
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message


def test_rejects_missing_property(tmp_path: Path) -> None:
    path = write_structured(tmp_path / "noopacity.ply", inria_vertices(drop="opacity"))
    assert_rejected(path, "missing", "'opacity'")


def test_rejects_gap_in_f_rest(tmp_path: Path) -> None:
    assert_rejected(write_structured(tmp_path / "gap.ply", inria_vertices(drop="f_rest_4")), "missing", "'f_rest_4'")


def test_rejects_wrong_type(tmp_path: Path) -> None:
    assert_rejected(write_structured(tmp_path / "double.ply", inria_vertices(double="opacity")), "'opacity'", "double")


def test_rejects_float_instance_column(tmp_path: Path) -> None:
    vertices = inria_vertices()
    with_instance = np.zeros(len(vertices), dtype=vertices.dtype.descr + [("instance", "<f4")])
    assert_rejected(write_structured(tmp_path / "fid.ply", with_instance), "'instance'", "float")


def test_rejects_truncated_body(tmp_path: Path) -> None:
    path = tmp_path / "cut.ply"
    write_ply(path, random_gaussians(50, 3, 16))
    path.write_bytes(path.read_bytes()[:-100])
    assert_rejected(path, "truncated", "early end-of-file")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_rejects_non_finite(tmp_path: Path, bad: float) -> None:
    vertices = inria_vertices()
    vertices["opacity"][[1, 3]] = bad
    vertices["scale_1"][0] = bad
    path = write_structured(tmp_path / "nan.ply", vertices)
    assert_rejected(path, "NaN or inf", "opacity (2 rows)", "scale_1 (1 row)")


def test_write_refuses_non_finite(tmp_path: Path) -> None:
    gaussians = random_gaussians(4, 0, 2)
    gaussians.features[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"feat_1 \(1 row\)"):
        write_ply(tmp_path / "nan.ply", gaussians)


def test_rejects_f_rest_count_matching_no_degree(tmp_path: Path) -> None:
    vertices = inria_vertices(sh_degree=1)
    ten = np.zeros(len(vertices), dtype=vertices.dtype.descr + [("f_rest_9", "<f4")])
    assert_rejected(write_structured(tmp_path / "ten.ply", ten), "10 f_rest", "0, 9, 24, 45")


def test_rejects_file_without_vertex_element(tmp_path: Path) -> None:
    path = tmp_path / "faces.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(np.zeros(2, dtype=[("a", "<f4")]), "face")]).write(str(path))
    assert_rejected(path, "no 'vertex' element")


@pytest.mark.parametrize(
    "content", [b"", b"solid cube\nfacet normal 0 0 1\n", b"ply\nformat binary_little_endian 1.0\n", bytes(range(256))]
)
def test_rejects_non_ply(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.ply"
    path.write_bytes(content)
    assert_rejected(path, "not a readable PLY")


# --- atomic writes -------------------------------------------------------------------------------


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scene.ply"
    path.write_bytes(b"old contents")

    def half_write(self: plyfile.PlyData, stream) -> None:
        stream.write(b"ply\nformat binary_little_endian 1.0\n")
        raise OSError("disk full")

    monkeypatch.setattr(plyfile.PlyData, "write", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_ply(path, random_gaussians(10, 1, 3))
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["scene.ply"]


def test_write_features_replaces_the_feature_columns_and_keeps_every_other_one(tmp_path):
    gaussians = random_gaussians(20, sh_degree=1, feature_dim=4)
    path = tmp_path / "scene.ply"
    write_ply(path, gaussians, instance_ids=torch.arange(20) * 3)
    before = plyfile.PlyData.read(str(path))["vertex"]
    write_features(path, torch.full((20, 6), 2.0))
    after = plyfile.PlyData.read(str(path))["vertex"]
    names = [p.name for p in after.properties]
    assert names == inria_names(1) + [f"feat_{i}" for i in range(6)] + ["instance"]  # where the old ones were
    for name in inria_names(1) + ["instance"]:
        assert after.data[name].tobytes() == before.data[name].tobytes(), name
    contents = read_ply(path)
    assert torch.equal(contents.gaussians.features, torch.full((20, 6), 2.0))
    assert torch.equal(contents.instance_ids, torch.arange(20) * 3)

    with pytest.raises(ValueError, match="holds 20 Gaussians"):
        write_features(path, torch.zeros(19, 6))
    with pytest.raises(ValueError, match="NaN or inf values in feat_1"):
        write_features(path, torch.tensor([[0.0, float("nan")]]).expand(20, 2))
    assert read_ply(path).gaussians.feature_dim == 6  # refused writes changed nothing

    plain = tmp_path / "plain.ply"
    write_ply(plain, gaussians, plain=True)
    original = plain.read_bytes()
    write_features(plain, torch.ones(20, 3))
    assert [p.name for p in plyfile.PlyData.read(str(plain))["vertex"].properties][-3:] == ["feat_0", "feat_1", "feat_2"]
    write_features(plain, torch.zeros(20, 0))
    assert plain.read_bytes() == original  # added then removed: the file as it was, byte for byte
