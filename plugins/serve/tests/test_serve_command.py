"""``kernel serve`` on the command line: the hook stays light, unsafe or wrong options are one clear line."""

import subprocess
import sys

import pytest

from kernel.cli import main
from kernel_serve.config import ServeConfig, check_host, is_local_host


def test_registering_the_command_imports_neither_torch_nor_fastapi():
    code = ("import argparse, sys, kernel_serve; from kernel.hookspecs import hookimpl; "
            "p = argparse.ArgumentParser(); kernel_serve.kernel_register_commands(p.add_subparsers()); "
            "a = p.parse_args(['serve', '--port', '1234']); assert a.port == 1234; "
            "print(sorted(m for m in ('torch', 'fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_serve_is_a_kernel_command():
    out = subprocess.run([sys.executable, "-m", "kernel.cli", "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--token" in out.stdout and "--model-dir" in out.stdout


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                         ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                         ("::", False), ("example.com", False)])
def test_non_local_hosts_need_a_token(host, local):
    assert is_local_host(host) is local
    if local:
        check_host(host, None)
    else:
        with pytest.raises(ValueError, match="--token"):
            check_host(host, None)
        check_host(host, "t")


def test_refusals_are_one_line_and_start_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KERNEL_SERVE_TOKEN", raising=False)
    for argv, needle in ((["--host", "0.0.0.0"], "--token"),
                         (["--model", str(tmp_path / "none")], "--model"),
                         (["--model-dir", str(tmp_path / "none")], "--model-dir"),
                         (["--max-steps", "0"], "max_steps"),
                         (["--port", "70000"], "--port")):
        assert main(["serve", "--outputs", str(tmp_path / "out"), *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("kernel serve: error:") and needle in err, err


def test_config_rejects_bad_limits():
    with pytest.raises(ValueError, match="queue_limit"):
        ServeConfig(queue_limit=0)
    with pytest.raises(ValueError, match="token"):
        ServeConfig(token=" ")
