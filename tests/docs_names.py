"""The docs-name checker behind tests/test_config_reference.py: every page a user reads (README.md,
RELIABILITY.md, docs/**, benchmarks/README.md) names only what exists. Repository paths and file names,
`ltxdist` modules, config keys (against docs/configuration.md), `group=option`, metric keys, code names
and every `--option` of an `ltxdist-*` command (against that command's own parser); the overrides of a
training command (`ltxdist-train`, `-m ltxdist.training.train`, `launch/train.sh`, `slurm/*.sbatch`)
are composed and validated as the command does before it starts. What is not ltxdist's is recognised by
rule (another project's table column, a shell variable the page sets, a module of an installed package, a
file the code writes) or listed in _NOT_OURS with the reason. docs/architecture.md's metric table must
hold exactly the metric keys the code logs.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

from e2e_utils import REPO

from ltxdist.config.schema import ConfigError, validate_config
from ltxdist.config.store import compose_train_config
from ltxdist.training.cli import _describe_only

ARCHITECTURE = REPO / "docs" / "architecture.md"
# Every page a user reads. Not docs/configuration.md (generated: the tests above keep it current), nor the
# dated reports (benchmarks/results/*, the generated benchmarks/SCALING.md): they record their day.
PAGES = sorted(
    {
        REPO / "README.md",
        REPO / "RELIABILITY.md",
        REPO / "benchmarks" / "README.md",
        *(REPO / "docs").rglob("*.md"),
    }
    - {REPO / "docs" / "configuration.md"}
)
_TICKED = re.compile(r"`([^`\n]+)`")
_FENCE = re.compile(r"^\s*```")
_REPO_PATH = re.compile(r"^(?:ltxdist|kernels|benchmarks|conf|tests|docs|launch|slurm|scripts)/\S*$")
# A file named without its folder (`test_nonfinite.py`, `RELIABILITY.md`), or from a folder of the checkout
# down (`parallel/dims.py`, `results/probe_1xh200_2026-12-04.log`): some checkout path must end with it.
_BARE_FILE = re.compile(r"^[\w-]+\.(?:py|md)$")
_RELATIVE_FILE = re.compile(r"^[\w.-]+(?:/\S+)+\.(?:py|md|yaml|sh|sbatch|toml|log|json)$")
# Placeholders of a path pattern: `*`, `<date>`, `$WORK`, `{json,md}`.
_PATH_HOLE = re.compile(r"(\*|<[^>/]+>|\$\{?\w+\}?|\{[^}/]+\})")
_MODULE = re.compile(r"\bltxdist(?:_kernels)?(?:\.\w+)+")
_GROUP_CHOICE = re.compile(r"^(\w+)=(\w+)$")
# A Hydra override: `key=value`, `group=option`, `+key=value`, `++key=value`, `~key`, `~key=value`.
_OVERRIDE = re.compile(r"(?:\+\+?)?[A-Za-z_][\w.@/-]*=.*|~[A-Za-z_][\w.@/-]*(?:=.*)?")
_CONFIG_KEY = re.compile(r"[a-z_]\w*(?:\.[a-z_]\w*)+")
_METRIC_SECTION = re.compile(r"^## 6\. Metric keys\n(.*?)(?=^## |\Z)", re.S | re.M)
# Metric keys are namespaced ("loss/total"); the progress bar's "tok/s" label is not one.
_NAMESPACED = re.compile(r"^[a-z_]+/[\w.-]+(?:/[\w.-]+)?$")
_NOT_METRICS = {"tok/s"}
# A code name (`abandon_later_steps`, `CheckpointAndExport.save`, `LTXDIST_PEAK_TFLOPS`): each dotted part
# must occur as a word in the code. Plain words (`auto`, `never`) are not checked.
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_CODE_FILES = (".py", ".sh", ".yaml", ".sbatch", ".toml")
_CODE_ROOTS = ("ltxdist", "kernels", "benchmarks", "conf", "launch", "slurm", "scripts", "tests")
# Table columns whose names are not ltxdist's, by the start of their header cell.
_OTHER_COLUMNS = {
    "ltx-trainer": "docs/from_ltx_trainer.md: the other project's commands and keys, mapped to ours",
    "you wrote": "docs/config.md: mistakes shown on purpose, next to the error they get",
}
# Names in prose that are not ltxdist's, with why; (page, name) so that each stays allowed on its page only.
_NOT_OURS = {
    ("README.md", "parallel=0"): "a bad group choice, shown as what is refused",
    ("docs/from_ltx_trainer.md", "media_path"): "ltx-trainer's legacy manifest column",
    ("docs/from_ltx_trainer.md", "ref_media_path"): "ltx-trainer's legacy manifest column",
    ("docs/from_ltx_trainer.md", "cosine_with_restarts"): "an ltx-trainer schedule ltxdist does not have",
    ("docs/distributed.md", "KillWait"): "SLURM's setting (slurm.conf)",
    ("docs/recipes/ic_lora.md", "LTXICLoRALoaderModelOnly"): "ComfyUI's IC-LoRA loader node",
    ("docs/data.md", "WORD"): "the placeholder of `--lora-trigger WORD`",
    ("docs/recipes/staged_curriculum.md", "WxHx1"): "a bucket with placeholders for width and height",
    ("docs/sampling.md", "PV"): "the attention product P V of the FLOP count, next to `QK^T`",
}


def relative(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


@functools.cache
def _checkout_paths() -> tuple[str, ...]:
    """Every file and folder of the checkout a page can name (relative, '/'-separated)."""
    roots = [REPO / r for r in (*_CODE_ROOTS, "docs")]
    found = [p for r in roots for p in r.rglob("*") if "__pycache__" not in p.parts]
    return tuple(relative(p) for p in [*roots, *REPO.glob("*.*"), *found])


@functools.cache
def _checkout_folders() -> frozenset[str]:
    return frozenset(p.rsplit("/", 1)[-1] for p in _checkout_paths() if (REPO / p).is_dir())


def _path_regex(path: str) -> str:
    """A documented path as a regex over checkout paths: each placeholder stands for part of one name,
    `{json,md}` for either."""
    pieces = _PATH_HOLE.split(path)
    return "".join(
        re.escape(piece)
        if i % 2 == 0
        else "(?:" + "|".join(map(re.escape, piece[1:-1].split(","))) + ")"
        if piece.startswith("{") and not piece.startswith("${")
        else "[^/]*"
        for i, piece in enumerate(pieces)
    )


def _path_problem(word: str) -> str | None:
    """A repository path (`ltxdist/io.py`, `benchmarks/results/data_<hardware>_<date>.{json,md}`), a bare
    file name or a path from a checkout folder down must exist (a bare name may also be a file the code
    writes); `file.py::name` must define name. None for what is no checkout path (a run's
    `out/beach.json`, another project's `configs/x.yaml`)."""
    path, _, name = word.partition("::")
    path = path.rstrip("/")
    if _REPO_PATH.match(path):
        whole = re.compile(_path_regex(path) + "$")
        found = [p for p in _checkout_paths() if whole.match(p)]
    elif _BARE_FILE.match(path) or (_RELATIVE_FILE.match(path) and path.split("/")[0] in _checkout_folders()):
        ending = re.compile("(?:^|/)" + _path_regex(path) + "$")
        found = [p for p in _checkout_paths() if ending.search(p)]
        if not found and path in _code_names()[1]:
            return None  # `summary.md`: a file the code writes
    else:
        return None
    if not found:
        return f"path {word}: not in the checkout"
    defines = re.compile(rf"^\s*(?:async def|def|class) {re.escape(name)}\b", re.M)
    if name and not any(defines.search((REPO / p).read_text()) for p in found if p.endswith(".py")):
        return f"{word}: {path} defines no {name}"
    return None


def _module_problem(dotted: str) -> str | None:
    """`ltxdist.a.b` (or `ltxdist_kernels.a`) must be a module or package of the checkout; one trailing
    part may be a name the module defines."""
    parts = dotted.split(".")
    root = REPO / "kernels" if parts[0] == "ltxdist_kernels" else REPO
    for cut in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:cut])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if source.is_file():
            rest = parts[cut:]
            if not rest:
                return None
            name = re.escape(rest[0])
            defined = re.search(rf"^(?:def|class) {name}\b|^{name}\s*[:=]", source.read_text(), re.M)
            return None if len(rest) == 1 and defined else f"{dotted}: {source} defines no {rest[0]}"
    return f"{dotted}: no such module"


def _installed_module(dotted: str) -> bool:
    """`torch.utils.flop_counter`: a module of an installed package (found without importing it)."""
    top = dotted.split(".", 1)[0]
    spec = importlib.util.find_spec(top) if top.isidentifier() and not top.startswith("ltxdist") else None
    if spec is None or not spec.submodule_search_locations:
        return False
    base = Path(next(iter(spec.submodule_search_locations))).parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@functools.cache
def _config_keys() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(every key of docs/configuration.md, the top-level groups it has sections for, its free-form keys:
    dicts whose own keys are the user's, e.g. `extras.shards_root`)."""
    text = (REPO / "docs" / "configuration.md").read_text()
    rows = [
        [c.strip().strip("`") for c in ln.split("|")[1:3]] for ln in text.splitlines() if ln.startswith("| `")
    ]
    free_form = frozenset(key for key, kind in rows if kind.startswith("dict["))
    return frozenset(k for k, _ in rows), frozenset(re.findall(r"^## `(\w+)`", text, re.M)), free_form


@functools.cache
def _code_names() -> tuple[frozenset[str], frozenset[str]]:
    """(every word of the code and tests a name on a page can come from, and their file names: a config
    option is one, `ltx23_id_lora_8xh100`; every file name the code mentions, e.g. the `summary.md` a grid
    writes). Not the docs, nor this checker and its test (its misspelt names): they would match
    themselves."""
    checker = {Path(__file__).resolve(), Path(__file__).resolve().with_name("test_config_reference.py")}
    files = [f for r in _CODE_ROOTS for f in sorted((REPO / r).rglob("*")) if f.suffix in _CODE_FILES]
    texts = {f: f.read_text() for f in [*files, REPO / "pyproject.toml"] if f not in checker}
    words = {w for f, text in texts.items() for w in [f.stem, *re.findall(r"\w+", text)]}
    file_names = {n for text in texts.values() for n in re.findall(r"[\w.-]+\.\w+", text)}
    return frozenset(words), frozenset(file_names)


def _is_code_word(part: str) -> bool:
    """A word of the code, or one the code formats: `lora_weights_step_003000` from
    f"lora_weights_step_{step:06d}", `nan_step_fsdp2` from f"nan_step_{parallel}"."""
    words = _code_names()[0]
    if part in words:
        return True
    cuts = [m.end() for m in re.finditer("_", part)]
    return any(part[:i] in words and (part[i:].isdigit() or part[i:] in words) for i in cuts)


def _namespaced_constants(path: Path) -> set[str]:
    strings = (n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant))
    return {s for s in strings if isinstance(s, str) and _NAMESPACED.match(s) and s not in _NOT_METRICS}


@functools.cache
def logged_metric_keys() -> frozenset[str]:
    """What the training metrics can record: the namespaced string constants of ltxdist/tracking and
    ltxdist/training (where metrics are logged), the sigma-bucket losses as TrainingMetrics builds them for
    the training module's bucket edges, and metrics.jsonl's record header."""
    from ltxdist.tracking.metrics import TrainingMetrics, loss_slots
    from ltxdist.training.callbacks import MetricsJsonl
    from ltxdist.training.module import SIGMA_BUCKET_EDGES

    keys: set[str] = set(MetricsJsonl.HEADER)
    keys |= set(loss_slots(TrainingMetrics(bucket_edges=SIGMA_BUCKET_EDGES).buckets))
    for folder in ("tracking", "training"):
        for path in sorted((REPO / "ltxdist" / folder).rglob("*.py")):
            keys |= _namespaced_constants(path)
    return frozenset(keys)


def _metric_problems(text: str, logged: set[str]) -> list[str]:
    """The metric table (section 6) against what the code logs, both ways."""
    section = _METRIC_SECTION.search(text)
    if section is None:
        return ["no '## 6. Metric keys' section"]
    documented = [
        key
        for line in section.group(1).splitlines()
        if line.startswith("| `")
        for key in _TICKED.findall(line.split("|")[1])
    ]
    # `loss/video/sigma_<lo>-<hi>` stands for every bucket of that stream.
    patterns = {
        k: re.compile(re.escape(k).replace("<lo>", r"\d+\.\d+").replace("<hi>", r"\d+\.\d+") + "$")
        for k in documented
    }
    problems = [
        f"metric {k}: not logged by the code" for k, p in patterns.items() if not any(map(p.match, logged))
    ]
    problems += [
        f"metric {key}: logged, but missing from the metric table"
        for key in sorted(logged)
        if not any(p.match(key) for p in patterns.values())
    ]
    return problems


def _metric_name_problem(token: str, logged: set[str]) -> str | None:
    """A metric key named on any page (`train/nonfinite_skipped`): in a logged namespace, it must be
    logged."""
    namespaces = {k.split("/", 1)[0] for k in logged if "/" in k}
    if not _NAMESPACED.match(token) or token.split("/", 1)[0] not in namespaces or token in logged:
        return None
    return f"metric {token}: not logged by the code"


def _choice_problem(token: str) -> str | None:
    """`group=option` of a config group: conf/<group>/<option>.yaml must exist."""
    choice = _GROUP_CHOICE.match(token)
    if choice is None:
        return None
    group, option = REPO / "conf" / choice.group(1), choice.group(2)
    if not group.is_dir() or (group / f"{option}.yaml").is_file():
        return None  # not a config group (e.g. `KEY=VALUE` of a shell line), or the option exists
    return f"{token}: no conf/{choice.group(1)}/{option}.yaml"


def _config_key_problem(key: str) -> str | None:
    keys, _, free_form = _config_keys()
    if key in keys:
        return None
    parent = next((f for f in free_form if key.startswith(f + ".")), None)
    if parent is None:
        return f"config key {key}: not in docs/configuration.md"
    missing = [part for part in key[len(parent) + 1 :].split(".") if not _is_code_word(part)]
    return f"config key {key}: {', '.join(missing)} not in the code" if missing else None


def _code_name_problem(token: str, shell_variables: set[str]) -> str | None:
    if token in shell_variables:
        return None  # `WORK`: a variable the page's own commands set or read
    missing = [part for part in token.split(".") if not _is_code_word(part)]
    if not missing or ("." in token and _installed_module(token)):
        return None
    return f"name {token}: {', '.join(missing)} not in the code"


def _token_problems(token: str, logged: set[str], shell_variables: set[str]) -> list[str]:
    """What is wrong with one `ticked` name of a page: a repository path, an ltxdist module, a
    `group=option`, a config key, a metric key or a code name that does not exist."""
    words = token.split()
    if len(words) > 1 and all(map(_OVERRIDE.fullmatch, words)):
        # Overrides in prose (`parallel=single data.batch_size=4`), each checked alone: composing them
        # could refuse what a page shows on purpose (`parallel=ddp parallel.reshard_after_forward=false`).
        return [p for word in words for p in _token_problems(word, logged, shell_variables)]
    problems = [p for p in map(_module_problem, _MODULE.findall(token)) if p]
    problems += filter(None, map(_path_problem, words))  # e.g. `launch/train.sh --dry-run`
    override = token.lstrip("+~")  # Hydra's `+key=`, `++key=`, `~key`
    problems += filter(None, [_choice_problem(override), _metric_name_problem(token, logged)])
    key = override.split("=", 1)[0]
    if key.split(".", 1)[0] in _config_keys()[1] and _CONFIG_KEY.fullmatch(key):
        problems += filter(None, [_config_key_problem(key)])
    elif (
        _IDENTIFIER.fullmatch(token) and not _BARE_FILE.match(token) and ("_" in token or not token.islower())
    ):
        problems += filter(None, [_code_name_problem(token, shell_variables)])
    return problems


# -- commands named on the pages, against their parsers and the config ---------------------------------
_LONG_OPTION = re.compile(r"--[A-Za-z][\w-]*")
# `ltxdist-sample --prompt ...` means `ltxdist-sample generate ...` (ltxdist/sampling/cli.py, main); other
# commands named without their subcommand are checked against the options of any of them.
_DEFAULT_SUBCOMMAND = {"ltxdist-sample": "generate", "ltxdist.sampling.cli": "generate"}
# What separates the commands of a line shlex cannot split (an unbalanced quote: `it's`).
_SHELL_SEPARATOR = re.compile(r"&&|\|\||[|;()]|\$\(")
# The commands whose arguments are Hydra overrides of the training config: the console script, the module
# torchrun starts, and the launchers that hand theirs on to it (launch/train.sh, slurm/*.sbatch).
_TRAINING = ("ltxdist-train", "ltxdist.training.train")
_LAUNCHER = re.compile(r"(?:^|/)((?:launch|slurm)/[\w-]+\.(?:sh|sbatch))$")
# `$WORK/run`, `${GEMMA_DIR}`: the shell puts a value there; 1 reads as a number where a key wants one and
# as text elsewhere (`1/run`). Hydra's own `${run.name}`, `${oc.env:X}` are left to Hydra.
_SHELL_VARIABLE = re.compile(r"\$(?:\{[A-Za-z_]\w*\}|[A-Za-z_]\w*)")


def _options(parser: argparse.ArgumentParser) -> dict[str, frozenset[str]]:
    """{"": the command's own options, subcommand: its options and the command's}. argparse keeps its
    actions private; reading them beats parsing --help."""
    own = frozenset(o for a in parser._actions for o in a.option_strings)
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out = {"": own}
    for name, sub in (item for a in subs for item in a.choices.items()):
        out[name] = own | {o for a in sub._actions for o in a.option_strings}
    return out


@functools.cache
def _commands() -> dict[str, dict[str, frozenset[str]]]:
    """Each console script of pyproject.toml (also as `-m module`) with its options, from the parser its
    module builds (`build_parser()`); `ltxdist-train` and the module torchrun starts hand their command
    line to Hydra, whose parser this is."""
    from hydra._internal.utils import get_args_parser

    # [project.scripts] read by hand: tomllib is 3.11+, and the section is `name = "module:function"` lines.
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    scripts = dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section, re.M))
    out: dict[str, dict[str, frozenset[str]]] = {}
    for command, target in scripts.items():
        module = importlib.import_module(target.split(":")[0])
        parser = get_args_parser() if command == "ltxdist-train" else module.build_parser()
        out[command] = out[module.__name__] = _options(parser)
    out["ltxdist.training.train"] = out["ltxdist-train"]
    return out


def _shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line, each as its words the way the shell splits them: a quoted
    `"validation.prompts=[a b, c]"` or `--buckets "960x544x49;768x448x49"` is one word; `&&`, `|`, `;`,
    `(`, `$(` and redirections end a command."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""  # code blocks come without their comments
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: prose in backticks, not a shell line
        return [segment.split() for segment in _SHELL_SEPARATOR.split(line)]
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token and set(token) <= set(lexer.punctuation_chars):
            commands.append([])
        else:
            commands[-1].append(token)
    return commands


def _command_at(words: list[str], i: int) -> tuple[str, list[str]] | None:
    """(command, its arguments) when words[i] starts a command this check knows: an `ltxdist-*` program
    (`.venv/bin/ltxdist-sample` too), `-m` with an ltxdist entry module (other modules' options are not
    checked: none documented), or a launcher script."""
    program = words[i].rsplit("/", 1)[-1]
    if re.fullmatch(r"ltxdist-[a-z-]+", program):
        return program, words[i + 1 :]
    if words[i] == "-m" and i + 1 < len(words) and words[i + 1] in _commands():
        return words[i + 1], words[i + 2 :]
    launcher = _LAUNCHER.search(words[i])
    return (launcher.group(1), words[i + 1 :]) if launcher else None


def _script_default(script: str, text: str, pattern: str) -> str:
    found = re.search(pattern, text)
    assert found, f"{script} no longer matches {pattern!r}: update _launcher_overrides"
    return found.group(1)


def _launcher_overrides(script: str, before: list[str]) -> list[str]:
    """What a launcher appends to the overrides it hands on. launch/train.sh appends
    parallel.devices=$NPROC parallel.num_nodes=$NNODES (NPROC defaults to the machine's GPUs, unknown
    here: only what the command sets); an sbatch file starts it with NPROC=$GPUS_PER_NODE on one node or
    on the job's (sbatch --nodes, else SLURM_NNODES as a dry run sets it, else the file's default)."""
    env = dict(w.split("=", 1) for w in before if re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w))
    if script == "launch/train.sh":
        devices, nodes = env.get("NPROC"), env.get("NNODES")
    else:
        text = (REPO / script).read_text()
        devices = env.get("GPUS_PER_NODE") or _script_default(script, text, r"GPUS_PER_NODE:-(\d+)")
        asked = re.search(r"(?:^|\s)(?:--nodes[= ]|-N ?)(\d+)\b", " ".join(before))
        if re.search(r"\bNNODES=1\b", text):  # train_1node.sbatch
            nodes = "1"
        elif asked:
            nodes = asked.group(1)
        else:
            nodes = env.get("SLURM_NNODES") or _script_default(script, text, r"SLURM_NNODES:-(\d+)")
    return [f"parallel.{key}={value}" for key, value in (("devices", devices), ("num_nodes", nodes)) if value]


@functools.cache
def _compose_problem(overrides: tuple[str, ...], validate: bool) -> str | None:
    """Why `ltxdist-train` refuses these overrides before it starts (train.main composes and validates
    them first; `--cfg job` and Hydra's other describe-only flags only compose), or None. Cached: pages
    repeat commands, and the stale-page test checks pages again."""
    try:
        cfg = compose_train_config(list(overrides))
        if validate:
            validate_config(cfg)
    except Exception as exc:  # ConfigError names the key; what else Hydra raises is reported as it reads
        return str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _override_problems(command: str, arguments: list[str], appended: list[str]) -> list[str]:
    """A training command's overrides, composed as the command composes them (a shell variable read as 1);
    none when it names none (`ltxdist-train --help`, `NPROC=2 launch/train.sh ...`)."""
    overrides = [_SHELL_VARIABLE.sub("1", w) for w in arguments if _OVERRIDE.fullmatch(w)]
    if not overrides:
        return []
    problem = _compose_problem((*overrides, *appended), validate=not _describe_only(arguments))
    return [f"{command}: {problem}"] if problem else []


def _flag_problems(command: str, options: dict[str, frozenset[str]], arguments: list[str]) -> list[str]:
    """Each `--option` must be one the command's parser (of its subcommand, where one is named) knows."""
    sub = arguments[0] if arguments and arguments[0] in options else _DEFAULT_SUBCOMMAND.get(command, "")
    known = options[sub] if sub or len(options) == 1 else frozenset().union(*options.values())
    flags = (w.split("=", 1)[0] for w in arguments)
    return [
        f"{command}{' ' + sub if sub else ''}: no option {f}"
        for f in flags
        if _LONG_OPTION.fullmatch(f) and f not in known
    ]


def _one_command_problems(command: str, arguments: list[str], before: list[str]) -> list[str]:
    """One command with its arguments (and the words before it: `NPROC=8`, `sbatch --nodes=4`)."""
    launcher, appended = _LAUNCHER.fullmatch(command) is not None, []
    if launcher:
        script = REPO / command
        if not script.is_file():
            return [f"launcher {command}: not in the checkout"]
        if not re.search(r"-m ltxdist\.training\.train|launch/train\.sh", script.read_text()):
            return []  # not a training launcher: nothing is known about its arguments
        # train.sh's --dry-run may come first; Hydra's flags pass on to the training module.
        options = {"": _commands()["ltxdist-train"][""] | {"--dry-run"}}
        appended = _launcher_overrides(command, before)
    elif command in _commands():
        options = _commands()[command]
    else:
        return [f"command {command}: not a console script or entry module of pyproject.toml"]
    problems = _flag_problems(command, options, arguments)
    if launcher or command in _TRAINING:
        problems += _override_problems(command, arguments, appended)
    return problems


def _command_problems(line: str) -> list[str]:
    """What is wrong with the commands of a shell line (`ltxdist-prepare ...`, `-m ltxdist.data.prepare.cli
    ...`, `NPROC=8 launch/train.sh ...`): an `ltxdist-*` command or launcher that does not exist, an
    `--option` its parser does not know, and for a training command the first reason its overrides are
    refused (a misspelt key, a group option that does not exist, a value of the wrong type, ...)."""
    problems = []
    for words in _shell_commands(line):
        for i in range(len(words)):
            found = _command_at(words, i)
            if found:
                problems += _one_command_problems(*found, before=words[:i])
                break
    return problems


# -- the pages -----------------------------------------------------------------------------------------
def _cells(row: str) -> list[str]:
    return re.split(r"(?<!\\)\|", row.strip().strip("|"))


def _page_lines(text: str) -> list[tuple[int, str, str]]:
    """(number, line, "fence" | "code" | "prose") of a page. A prose line whose code span goes on to the
    next line (markdown allows it: `ltxdist-train parallel=ddp` / `parallel.devices=2`) is joined with
    that line, under its own number; table rows are never joined."""
    lines: list[tuple[int, str, str]] = []
    in_code, open_span = False, False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            in_code = not in_code
            lines.append((n, line, "fence"))
        elif in_code:
            lines.append((n, line, "code"))
        elif open_span and line.strip() and not line.startswith("|"):
            start, joined, _ = lines[-1]
            lines[-1] = (start, f"{joined} {line.strip()}", "prose")
        else:
            lines.append((n, line, "prose"))
        last = lines[-1]
        open_span = last[2] == "prose" and not last[1].startswith("|") and last[1].count("`") % 2 == 1
    return lines


def _page_names(text: str) -> list[tuple[int, str]]:
    """(line, ticked name) of the prose and tables, outside code blocks and _OTHER_COLUMNS."""
    names, other_columns, previous = [], set(), ""
    for n, line, kind in _page_lines(text):
        if kind != "prose":
            previous = ""
            continue
        checked = line
        if line.startswith("|"):
            cells = _cells(line)
            if not previous.startswith("|"):  # a table's header row
                headers = [c.strip().lower() for c in cells]
                other_columns = {i for i, h in enumerate(headers) if h.startswith(tuple(_OTHER_COLUMNS))}
            checked = "|".join(c for i, c in enumerate(cells) if i not in other_columns)
        names += [(n, token) for token in _TICKED.findall(checked)]
        previous = line
    return names


def _page_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) of every code span (as _page_names finds them: another project's commands are
    not ours) and every line of a code block (continued lines joined)."""
    commands, pending = _page_names(text), None
    for n, line, kind in _page_lines(text):
        if kind != "code":
            pending = None
            continue
        start, joined = pending or (n, "")
        joined += " " + line.split(" #", 1)[0].rstrip("\\")
        pending = (start, joined) if line.endswith("\\") else None
        if pending is None:
            commands.append((start, joined))
    return sorted(commands)


def page_problems(page: str, text: str, logged: set[str]) -> list[str]:
    """Every name of a page (`docs/data.md`) that does not exist in the checkout, and every option its
    ltxdist commands do not have, as 'line N: ...' (empty: the page is current)."""
    shell_variables = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))
    shell_variables |= set(re.findall(r"^\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=", text, re.M))
    problems = [
        f"line {n}: {problem}"
        for n, token in _page_names(text)
        if (page, token) not in _NOT_OURS
        for problem in _token_problems(token, logged, shell_variables)
    ]
    return problems + [
        f"line {n}: {p}" for n, command in _page_commands(text) for p in _command_problems(command)
    ]


def architecture_problems(text: str, logged: set[str]) -> list[str]:
    """docs/architecture.md's names, and its metric table against what the code logs."""
    return page_problems("docs/architecture.md", text, logged) + _metric_problems(text, logged)
