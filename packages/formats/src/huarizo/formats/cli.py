"""The `huarizo` command. Each installed package adds its subcommands through the entry point group
`huarizo.commands`: an entry point is a function that takes the argparse subparsers and registers its commands,
setting `func` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel

from huarizo.formats.errors import HuarizoError

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from huarizo.formats.config import HuarizoConfig

C = TypeVar("C", bound="HuarizoConfig")

COMMAND_ENTRY_POINTS = "huarizo.commands"
_TRAINED_OPEN, _TRAINED_CLOSE = "⟦", "⟧"


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """Add the `--set KEY=VALUE` option every config-driven command takes."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )


def _field(cls: type[BaseModel], dotted: str) -> FieldInfo:
    """The pydantic field at a dotted path of a config class (`teacher.model`)."""
    *parents, last = dotted.split(".")
    for name in parents:
        annotation = cls.model_fields[name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise TypeError(f"{dotted}: {name} is not a config section")
        cls = annotation
    return cls.model_fields[last]


def add_config_options(
    parser: argparse.ArgumentParser,
    cls: type[BaseModel],
    fields: Sequence[str],
    *,
    config_file: bool = True,
    positional: str | None = None,
) -> None:
    """Add a command's config options: the YAML file (positional), `--set`, and one flag per field in `fields`.

    Flags are generated from the config class: `--api-base` for `api_base`, `--teacher-model` for `teacher.model`,
    with the field's description and default as help; booleans get `--x / --no-x`, lists take one or more values
    (`--answers a.jsonl b.jsonl`, or the flag repeated; give the config file first). Values are
    validated by the config class itself, so a bad flag gets the same message (naming the flag) as a bad `--set`.
    `positional` names a field given as the command's positional argument instead (`huarizo export MODEL_DIR`; a
    list field takes one or more): such a command takes no config file. Read the result back with
    `config_from_args`; the precedence is file < `--set` < flags.
    """
    if positional is not None:
        info = _field(cls, positional)
        many = _is_list(info)
        parser.add_argument(
            f"cfg:{positional}", nargs="+" if many else None, metavar=positional.upper(), help=_help(info)
        )
    elif config_file:
        parser.add_argument("config", nargs="?", help=f"a {cls.__name__} YAML file (--set and flags override it)")
    add_set_option(parser)
    for dotted in (f for f in fields if f != positional):
        info = _field(cls, dotted)
        flag = "--" + dotted.replace(".", "-").replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f"cfg:{dotted}", "default": None, "help": _help(info)}
        choices = _choices(info)
        if info.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _is_list(info):
            kwargs.update(action="extend", nargs="+", metavar=dotted.rsplit(".", 1)[-1].upper())
        elif choices is not None:
            kwargs["choices"] = choices
        else:
            kwargs["metavar"] = dotted.rsplit(".", 1)[-1].upper()
        parser.add_argument(flag, **kwargs)


def _help(info: FieldInfo) -> str:
    """A field's description and its default (or `required`), for `--help`."""
    if info.is_required():
        shown = "required"
    else:
        default = info.get_default(call_default_factory=True)
        shown = "default: none" if default in (None, [], {}) else f"default: {default}"
    return f"{info.description or ''} ({shown})".strip()


def _is_list(info: FieldInfo) -> bool:
    origin = get_origin(info.annotation) or info.annotation
    args = [a for a in get_args(info.annotation) if a is not type(None)]
    return origin is list or bool(args and get_origin(args[0]) is list)


def _choices(info: FieldInfo) -> list[str] | None:
    origin = get_origin(info.annotation) or info.annotation
    args = [a for a in get_args(info.annotation) if a is not type(None)]
    if origin is Literal:
        return [str(c) for c in get_args(info.annotation)]
    if args and get_origin(args[0]) is Literal:
        return [str(c) for c in get_args(args[0])]
    return None


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """The config of a command whose options `add_config_options` added: file < `--set` < flags."""
    flags = {}
    for key, value in vars(args).items():
        if key.startswith("cfg:") and value is not None:
            flags[key[4:]] = None if value == "null" else value  # as in YAML and --set: `null` unsets
    return cls.load(getattr(args, "config", None), args.overrides, flags)


def build_parser() -> argparse.ArgumentParser:
    """The root parser with the subcommands of every installed Huarizo package."""
    parser = argparse.ArgumentParser(prog="huarizo", description="Instruction data, fine-tuning, serving and judging.")
    parser.add_argument("--version", action=_Versions, help="list the installed Huarizo packages and their versions")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group=COMMAND_ENTRY_POINTS), key=lambda e: e.name):
        ep.load()(sub)
    return parser


class _Versions(argparse.Action):
    """`huarizo --version`: one line per installed Huarizo package, with its version."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from importlib.metadata import distributions

        found = {d.metadata["Name"].lower(): d.version for d in distributions()}
        print("\n".join(f"{name} {found[name]}" for name in sorted(found) if name.startswith("huarizo")))
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `huarizo` command; user errors are printed without a traceback, and output piped into a reader that
    leaves early (`| head`) ends quietly."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that left early is found here, not at exit
        return code
    except HuarizoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader is gone: what is left to flush goes nowhere (as Python's docs advise)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


# ---- the commands of huarizo-formats -------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    from huarizo.formats.io import read_records

    _at_least("--max-errors", args.max_errors, 0)
    result = read_records(args.file, args.format, skip_invalid=True)
    total = len(result.records) + len(result.errors)
    print(f"{args.file}: {total} records ({result.format}), {len(result.records)} valid, {len(result.errors)} invalid")
    for err in result.errors[: args.max_errors]:
        print(f"  {err}")
    if len(result.errors) > args.max_errors:
        print(f"  ... and {len(result.errors) - args.max_errors} more")
    return 1 if result.errors else 0


def _convert(args: argparse.Namespace) -> int:
    from huarizo.formats.convert import Turn, convert
    from huarizo.formats.errors import ConversionError
    from huarizo.formats.io import read_records, write_records

    turn: Turn = "first" if args.first_turn else "last" if args.last_turn else "error"
    result = read_records(args.input, args.format, skip_invalid=args.skip_invalid)
    rejects: list[dict[str, Any]] = [{"where": e.where, "field": e.field, "reason": e.message} for e in result.errors]
    failed: list[tuple[str, ConversionError]] = []
    try:
        out = convert(
            result.records, args.to, turn=turn, where=result.locations, rejects=failed if args.skip_invalid else None
        )
    except ConversionError as exc:
        raise ConversionError(f"{args.input}: {exc}") from None
    rejects += [{"where": where, "field": None, "reason": str(exc)} for where, exc in failed]
    n = write_records(args.output, out)
    print(f"wrote {n} {args.to} records to {args.output}")
    if rejects:
        rej = args.rejects or f"{args.output}.rejects.jsonl"
        write_records(rej if rej.endswith(".jsonl") else rej + ".jsonl", rejects)
        print(f"skipped {len(rejects)} invalid records; reasons in {rej}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from huarizo.formats.convert import to_conversations
    from huarizo.formats.io import read_records
    from huarizo.formats.templates import get_template

    _at_least("-n", args.n, 1)
    _at_least("--max-length", args.max_length, 1)
    tokenizer = None
    if args.tokenizer:
        from huarizo.formats.models import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    template = get_template(args.template, tokenizer)
    convs = [c for r in read_records(args.file, args.format).records[: args.n] for c in to_conversations(r)][: args.n]
    plain = args.plain or not sys.stdout.isatty()
    out = _PlainOut(args.show_trained) if plain else _RichOut()
    for k, conv in enumerate(convs):
        out.header(f"record {k}" + (f" ({conv.id})" if conv.id else ""))
        if tokenizer is None:
            for seg in template.render(conv):
                out.add(seg.text, seg.trainable)
            out.end()
            continue
        from huarizo.formats.masking import IGNORE_INDEX, tokenize_conversation

        sample = tokenize_conversation(conv, template, tokenizer, args.max_length)
        if sample is None:
            out.add("(dropped: no trained token within max length)", False)
            out.end()
            continue
        pairs = zip(sample.input_ids, [lab != IGNORE_INDEX for lab in sample.labels], strict=True)
        for trained, run in itertools.groupby(pairs, key=lambda p: p[1]):
            out.add(tokenizer.decode([t for t, _ in run]), trained)
        out.end(f"[{len(sample.input_ids)} tokens, {sample.num_trained} trained]")
    return 0


class _PlainOut:
    """Plain text for pipes and files: a `--- record K ---` line, then the text exactly as rendered (no wrapping,
    no colour), trained text between ⟦ ⟧ only when asked."""

    def __init__(self, marks: bool) -> None:
        self.marks = marks

    def header(self, title: str) -> None:
        sys.stdout.write(f"--- {title} ---\n")

    def add(self, piece: str, trained: bool) -> None:
        sys.stdout.write(_TRAINED_OPEN + piece + _TRAINED_CLOSE if trained and self.marks else piece)

    def end(self, note: str = "") -> None:
        sys.stdout.write("\n" + (note + "\n" if note else ""))


class _RichOut:
    """A terminal: a rule per record, trained text in bold green."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.text import Text

        self.console, self.make = Console(highlight=False), Text
        self.text = Text()

    def header(self, title: str) -> None:
        self.console.rule(title)
        self.text = self.make()

    def add(self, piece: str, trained: bool) -> None:
        self.text.append(piece, style="bold green" if trained else "")

    def end(self, note: str = "") -> None:
        if note:
            self.text.append("\n" + note, style="dim")
        self.console.print(self.text)


def _at_least(flag: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise HuarizoError(f"{flag}: must be at least {minimum} (got {value})")


def _config(args: argparse.Namespace) -> int:
    import json

    from huarizo.formats.config import config_classes

    classes = config_classes()
    if args.action == "list" or args.name is None:
        width = max(map(len, classes), default=0)
        for name in sorted(classes):
            what = " ".join((classes[name].__doc__ or "").strip().split("\n\n")[0].split())
            print(f"{name:<{width}}  {what.split('. ')[0]}".rstrip())
        return 0
    if args.name not in classes:
        raise HuarizoError(f"unknown config {args.name!r}; installed: {', '.join(sorted(classes)) or 'none'}")
    cls = classes[args.name]
    if args.action == "schema":
        print(json.dumps(cls.model_json_schema(), indent=2))
    else:
        print(cls.load(args.file, args.overrides).to_yaml(), end="")
    return 0


def register(sub: Any) -> None:
    """Register `validate`, `convert`, `render` and `config`."""
    from huarizo.formats.schemas import FORMATS

    fmts = ["auto", *FORMATS]
    p = sub.add_parser("validate", help="check a data file; exit 1 if any record is invalid")
    p.add_argument("file")
    p.add_argument("--format", default="auto", choices=fmts)
    p.add_argument("--max-errors", type=int, default=10)
    p.set_defaults(func=_validate)

    p = sub.add_parser("convert", help="convert a data file to another format")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--to", required=True, choices=list(FORMATS))
    p.add_argument("--format", default="auto", choices=fmts, help="format of the input (default: detected)")
    turn = p.add_mutually_exclusive_group()
    turn.add_argument("--first-turn", action="store_true", help="multi-turn to Alpaca: keep the first turn")
    turn.add_argument("--last-turn", action="store_true", help="multi-turn to Alpaca: keep the last turn")
    p.add_argument("--skip-invalid", action="store_true", help="write the valid records and a rejects file")
    p.add_argument("--rejects", help="rejects file (default: OUTPUT.rejects.jsonl)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("render", help="show records as the model sees them, trained text highlighted")
    p.add_argument("file")
    p.add_argument("--template", required=True)
    p.add_argument("--tokenizer", help="model reference or folder whose tokenizer to use")
    p.add_argument("--format", default="auto", choices=fmts)
    p.add_argument("-n", type=int, default=3, help="how many records")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument(
        "--plain",
        action="store_true",
        help="plain text as rendered, unwrapped and uncoloured (the default when stdout is not a terminal)",
    )
    p.add_argument("--show-trained", action="store_true", help="in plain text, put trained text between ⟦ ⟧")
    p.set_defaults(func=_render)

    p = sub.add_parser("config", help="list configs, print a config's JSON schema, or resolve a config file")
    p.add_argument("action", choices=["list", "schema", "show"])
    p.add_argument("name", nargs="?")
    p.add_argument("file", nargs="?", help="with show: the YAML file")
    add_set_option(p)
    p.set_defaults(func=_config)
