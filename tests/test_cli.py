"""Every `vmr` subcommand reports a user error the same way: one line `vmr <command>: ...` on stderr, exit 2."""
import pytest

from app.cli import build_parser, main


def _subcommands() -> list[str]:
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return list(action.choices)


def _bad_runs(tmp_path) -> dict[str, list[str]]:
    """A cheap invocation per subcommand that the command itself rejects (after argparse accepted it)."""
    nothing = str(tmp_path / "nothing")
    return {
        "demo": ["--no-app", "--videos", "0"],
        "synth": ["--out", nothing, "--videos", "2", "--size", "33"],
        "shards": ["--anno", nothing + ".json", "--videos", str(tmp_path), "--out", nothing],
        "tokenizer": ["encode", "--tokenizer", nothing, "a red ring"],
        "index": ["info", "--index", nothing],
        "search": ["--index", nothing, "a red ring"],
        "app": ["--index", nothing],
        "eval": ["--dataset", "msrvtt", "--anno", nothing, "--videos", str(tmp_path), "--model", nothing],
        "convert": [nothing + ".pth", "--out", nothing],
    }


def _run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


def _assert_one_line(rc, err, command):
    assert rc == 2, err
    assert err.startswith(f"vmr {command}: ") and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("command", _subcommands())
def test_usage_error_is_one_line(command, capsys):
    _assert_one_line(*_run([command, "--no-such-option"], capsys), command)


def test_every_subcommand_reports_its_own_errors_in_one_line(tmp_path, capsys):
    runs = _bad_runs(tmp_path)
    assert sorted(runs) == sorted(_subcommands()), "add a bad invocation for the new subcommand to _bad_runs"
    for command, argv in runs.items():
        _assert_one_line(*_run([command, *argv], capsys), command)


def test_index_needs_an_action(capsys):
    rc, err = _run(["index"], capsys)
    _assert_one_line(rc, err, "index")
    assert "choose an action" in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    import app.commands.synth as synth

    def broken(args):
        raise ValueError("a plain ValueError is a bug, not a user error")

    monkeypatch.setattr(synth, "run", broken)
    with pytest.raises(ValueError, match="is a bug"):
        main(["synth", "--out", "x"])
