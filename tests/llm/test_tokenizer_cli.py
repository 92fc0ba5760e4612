"""`mlscratch tokenizer`: train, encode, decode; every error is one line and a non-zero exit."""

import subprocess
import sys

import pytest

from mlscratch.llm.tokenizer import BPETokenizer
from mlscratch.llm.tokenizer_cli import main

TEXT = "The quick brown fox jumps over the lazy dog. Größe 🙂\n" * 200


@pytest.fixture
def trained(tmp_path):
    data, out = tmp_path / "data.txt", tmp_path / "tok.json"
    data.write_text(TEXT, encoding="utf-8")
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--vocab_size",
                "300",
                "--out",
                str(out),
                "--special_tokens",
                "<|endoftext|>",
                "--quiet",
            ]
        )
        == 0
    )
    return data, out


def test_train_encode_decode_round_trip(trained, capsys):
    data, out = trained
    tok = BPETokenizer.load(out)
    assert (
        tok.vocab_size == 300
        and tok.merges == BPETokenizer.train(TEXT, 300, special_tokens=["<|endoftext|>"]).merges
    )
    capsys.readouterr()
    assert main(["encode", "--tokenizer", str(out), "--text", "lazy dog 🙂"]) == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == tok.encode("lazy dog 🙂")
    assert main(["decode", "--tokenizer", str(out), "--ids", " ".join(ids)]) == 0
    assert capsys.readouterr().out == "lazy dog 🙂\n"
    assert main(["encode", "--tokenizer", str(out), "--data", str(data)]) == 0
    assert [int(i) for i in capsys.readouterr().out.split()] == tok.encode(TEXT)
    assert (
        main(
            [
                "encode",
                "--tokenizer",
                str(out),
                "--text",
                "a<|endoftext|>",
                "--allowed_special",
                "all",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.split()[-1] == "299"


def _fails(argv, capsys, match, status=1):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mlscratch tokenizer: error: "), err
    assert match in err, err


def test_errors_are_one_line_and_a_non_zero_exit(trained, tmp_path, capsys):
    data, out = trained
    capsys.readouterr()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    missing = str(tmp_path / "missing.txt")
    train = ["train", "--vocab_size", "300", "--out", str(tmp_path / "x.json"), "--quiet"]
    _fails([*train, "--data", str(bad)], capsys, "invalid byte at offset 3")
    _fails([*train, "--data", missing], capsys, "No such file or directory")
    _fails(
        ["train", "--data", str(data), "--vocab_size", "100", "--out", "x.json"],
        capsys,
        "at least 256",
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _fails([*train, "--data", str(empty)], capsys, "corpus is empty")
    _fails(["train", "--data", str(data)], capsys, "required", status=2)
    _fails(["frobnicate"], capsys, "invalid choice", status=2)
    _fails(
        ["decode", "--tokenizer", str(out), "--ids", "1 2 99999"], capsys, "outside the vocabulary"
    )
    _fails(["decode", "--tokenizer", str(out), "--ids", "1 x"], capsys, "must be integers", 2)
    _fails(["encode", "--tokenizer", str(out), "--text", "<|endoftext|>"], capsys, "special token")
    out.write_text(out.read_text()[:100])
    _fails(["encode", "--tokenizer", str(out), "--text", "x"], capsys, "invalid JSON")


def test_the_dispatcher_runs_the_command_without_a_traceback(trained, tmp_path, child_env):
    data, out = trained
    env = child_env
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlscratch",
            "tokenizer",
            "encode",
            "--tokenizer",
            str(out),
            "--text",
            "fox",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0 and run.stdout.split()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlscratch",
            "tokenizer",
            "encode",
            "--tokenizer",
            str(tmp_path / "nope.json"),
            "--text",
            "fox",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1
