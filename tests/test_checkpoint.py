"""mlscratch.checkpoint: atomic writes, format tags, weights_only reads, one-line errors."""

import pytest
import torch

from mlscratch.checkpoint import checkpoint_format, load_checkpoint, save_checkpoint, write_atomic

FMT = checkpoint_format("test", 1)


def test_round_trip_keeps_tensors_and_adds_the_format_tag(tmp_path):
    state = {"step": 3, "w": torch.randn(2, 3), "nested": {"a": [1, 2.5, "x"]}}
    save_checkpoint(state, tmp_path / "c.pt", FMT)
    back = load_checkpoint(tmp_path / "c.pt", FMT, keys=("step", "w"))
    assert back["format"] == "mlscratch-test-checkpoint-v1"
    assert back["step"] == 3 and back["nested"] == {"a": [1, 2.5, "x"]}
    assert torch.equal(back["w"], state["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    write_atomic(path, b"old")

    def fails(f):
        f.write(b"new but cut")
        raise RuntimeError("died")

    with pytest.raises(RuntimeError):
        write_atomic(path, fails)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "there is no checkpoint"),
        (b"not a zip", "not a readable checkpoint"),
        ({"format": "mlscratch-other-checkpoint-v7"}, "is a mlscratch-other-checkpoint-v7 file"),
        ({"weights": torch.zeros(1)}, "is not an mlscratch checkpoint"),
        ({"format": FMT}, "lacks ['step']"),
    ],
)
def test_bad_files_fail_with_one_line(tmp_path, content, message):
    path = tmp_path / "c.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        load_checkpoint(path, FMT, keys=("step",))
    assert message in str(err.value) and "\n" not in str(err.value)


class Payload:
    """An object that only a full unpickler could rebuild."""


def test_files_holding_objects_are_refused(tmp_path):
    torch.save({"format": FMT, "obj": Payload()}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "c.pt", FMT)
