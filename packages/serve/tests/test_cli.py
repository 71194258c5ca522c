"""`huarizo serve` and `huarizo chat` as a user runs them: real processes, a real terminal (pty) for the chat."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import httpx
import pytest

HUARIZO = [sys.executable, "-c", "from huarizo.formats.cli import main; raise SystemExit(main())"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TERM": "dumb", "NO_COLOR": "1"}


def test_serve_command_answers_and_stops_on_ctrl_c(tiny_model_dir: Path) -> None:
    cmd = [*HUARIZO, "serve", "--model", str(tiny_model_dir), "--port", "0", "--model-name", "cli-tiny"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "huarizo serve exited before serving"
            m = re.search(r"on (http://127\.0\.0\.1:\d+/v1)", line)
            url = m.group(1) if m else None
        assert url, "no 'serving ... on URL' line"
        r = httpx.post(
            f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        )
        assert r.status_code == 200 and r.json()["model"] == "cli-tiny"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_reports_a_bad_model_without_traceback(tmp_path: Path) -> None:
    out = subprocess.run([*HUARIZO, "serve", "--model", str(tmp_path)], capture_output=True, text=True, env=ENV)
    assert out.returncode == 1
    assert "without config.json" in out.stderr and "Traceback" not in out.stderr


def test_serve_refuses_cuda_without_a_gpu(tiny_model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    cmd = [*HUARIZO, "serve", "--model", str(tiny_model_dir), "--device", "cuda"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    assert out.returncode == 1 and "no CUDA GPU" in out.stderr and "Traceback" not in out.stderr


class Terminal:
    """A child process on a pseudo-terminal: write keys, read the screen until some text shows up."""

    def __init__(self, cmd: list[str], cwd: Path) -> None:
        self.master, slave = os.openpty()

        def controlling_tty() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            cmd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=ENV,
            start_new_session=True,
            preexec_fn=controlling_tty,
        )
        os.close(slave)
        self.screen = ""
        self.pos = 0  # where the last match ended: each expect reads on from there

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.compile(pattern).search(self.screen, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; screen:\n{self.screen[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"process ended before {pattern!r}; screen:\n{self.screen[-2000:]}")
                self.screen += data.decode(errors="replace").replace("\r\n", "\n")

    def wait_reading(self, timeout: float = 30.0) -> None:
        """Wait until the child blocks reading the terminal (a Ctrl-C sent before that is only seen after the read)."""
        # read, poll, select, pselect6, ppoll on x86-64; read, pselect6, ppoll on aarch64
        waits = {"0", "7", "23", "270", "271", "63", "72", "73"}
        deadline = time.monotonic() + timeout
        while True:
            try:
                blocked = Path(f"/proc/{self.proc.pid}/syscall").read_text().split()[0] in waits
            except OSError:  # /proc/PID/syscall needs ptrace rights: fall back to "the main thread sleeps"
                blocked = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "S"
            if blocked:
                return
            assert time.monotonic() < deadline, "the chat never waited for input"
            select.select([], [], [], 0.01)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


@pytest.fixture
def chat(tiny_model_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    term = Terminal(
        [*HUARIZO, "chat", "--model", str(tiny_model_dir), "--max-tokens", "8", "--temperature", "0"], tmp_path
    )
    yield term
    term.close()


def _answer(term: Terminal, question: str) -> str:
    term.send(question + "\n")
    return term.expect(r"assistant> (.*)\n")[1]


def test_chat_multi_turn_reset_save_and_ctrl_d(chat: Terminal, tmp_path: Path) -> None:
    chat.expect("user> ")
    first = _answer(chat, "Hello, who are you?")
    chat.expect("user> ")
    second = _answer(chat, "Tell me more.")
    chat.expect("user> ")
    chat.send("/save both.json\n")
    chat.expect("saved 4 messages")
    chat.send("/reset\n")
    chat.expect(r"\(conversation reset\)")
    chat.expect("user> ")
    _answer(chat, "A new start.")
    chat.expect("user> ")
    chat.send("/save one.jsonl\n")
    chat.expect("saved 2 messages")
    chat.expect("user> ")
    chat.send("\x04")  # Ctrl-D
    chat.expect("bye")
    assert chat.proc.wait(timeout=30) == 0

    saved = json.loads((tmp_path / "both.json").read_text())
    turns = saved[0]["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt"]
    assert [turns[0]["value"], turns[2]["value"]] == ["Hello, who are you?", "Tell me more."]
    assert [turns[1]["value"], turns[3]["value"]] == [first.strip("\r"), second.strip("\r")]
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert one[0]["conversations"][0]["value"] == "A new start."


def test_chat_ctrl_c_exits_cleanly(chat: Terminal) -> None:
    chat.expect("user> ")
    chat.wait_reading()
    chat.send("\x03")  # Ctrl-C
    chat.expect("bye")
    assert chat.proc.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--port", "99999"], "--port"),
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["--dtype", "int8"], "--dtype"),
    ],
)
def test_serve_refuses_out_of_range_flags_in_one_line(tiny_model_dir: Path, flags: list[str], flag: str) -> None:
    out = subprocess.run(
        [*HUARIZO, "serve", "--model", str(tiny_model_dir), *flags], capture_output=True, text=True, env=ENV
    )
    assert out.returncode in (1, 2) and flag in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 1 or "invalid choice" in out.stderr  # argparse's own choices check exits 2


def test_serve_options_come_from_the_config_file_set_and_flags(tmp_path: Path) -> None:
    """One precedence: the YAML file < --set < flags; every ServeConfig key has a flag or --set."""
    from huarizo.formats.cli import build_parser, config_from_args
    from huarizo.serve import ServeConfig

    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text("model: tiny\nport: 8001\nmax_batch_size: 4\nhost: 127.0.0.1\nmax_waiting_sequences: 512\n")
    args = build_parser().parse_args(
        [
            *["serve", str(cfg_file), "--set", "port=8002", "--set", "max_batch_size=6", "--port", "8003"],
            *["--api-key", "a", "--api-key", "b", "--max-sequences-per-request", "32", "--read-timeout", "5"],
        ]
    )
    cfg = config_from_args(ServeConfig, args)
    assert (cfg.model, cfg.port, cfg.max_batch_size, cfg.max_waiting_sequences) == ("tiny", 8003, 6, 512)
    assert cfg.api_keys == ["a", "b"] and cfg.max_sequences_per_request == 32 and cfg.read_timeout == 5.0
    assert cfg.dtype == "auto"


def test_serve_warns_when_exposed_without_a_key(tiny_model_dir: Path) -> None:
    cmd = [*HUARIZO, "serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        assert proc.stdout is not None
        lines = []
        while not any("serving" in line and "/v1" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "huarizo serve exited before serving:\n" + "".join(lines)
            lines.append(line)
        assert any("without an API key" in line for line in lines), lines
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_chat_says_what_the_first_start_prepares(tmp_path: Path) -> None:
    """The first start of a model that needs preparing (here `tiny`, in an empty cache) says what it does."""
    env = {**ENV, "HUARIZO_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [*HUARIZO, "chat", "--model", "tiny", "--max-tokens", "4"],
        input="/exit\n",
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "first use: training the tiny model's tokenizer" in proc.stderr and str(tmp_path / "cache") in proc.stderr
    again = subprocess.run(
        [*HUARIZO, "chat", "--model", "tiny"], input="/exit\n", capture_output=True, text=True, env=env
    )
    assert again.returncode == 0 and "first use" not in again.stderr


def test_chat_keeps_an_interrupted_answer_as_written(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C while the model writes stops the answer; the history (and /save) keep the text it had."""
    term = Terminal(
        [*HUARIZO, "chat", "--model", str(tiny_model_dir), "--max-tokens", "900", "--temperature", "0"], tmp_path
    )
    try:
        term.expect("user> ")
        term.send("Write a very long story.\n")
        term.expect(r"assistant> \S")  # the answer has started
        term.send("\x03")
        term.expect(r" \(stopped\)\n")
        screen = term.screen
        shown = screen[screen.rindex("assistant> ") + 11 : screen.rindex(" (stopped)")].replace("^C", "")
        term.expect("user> ")
        term.send("/save talk.json\n")
        term.expect("saved 2 messages")
        term.send("/exit\n")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()
    turns = json.loads((tmp_path / "talk.json").read_text())[0]["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"]
    assert turns[1]["value"] == shown and shown and "interrupted" not in shown
    assert len(shown) < 900


def test_chat_dtype_auto_is_bfloat16_only_where_the_cpu_computes_it() -> None:
    import torch

    from huarizo.serve import ChatConfig
    from huarizo.serve.config import resolve_dtype

    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # AVX-512 or AMX; an AVX2-only CPU emulates bfloat16
    assert ChatConfig().dtype == "auto" and resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
    assert resolve_dtype("float32", "cpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"
