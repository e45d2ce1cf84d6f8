"""Every example in README.md and docs/*.md runs, and every recipe under configs/recipes/ composes with `fit`.

What is extracted: every fenced block whose info string is ``bash``, ``sh`` or ``console`` (for ``console``,
only the lines that start with ``$ ``) and every ``python`` block. Other blocks (``yaml``, ``text``, untagged)
are illustrations and are not run.

Where it runs: each page gets its own temporary working folder that looks like a checkout right after
``make demo``: ``configs/`` and ``docs/examples/`` copied from the repository, tiny target and retain models
in ``outputs/demo/models/target`` and ``outputs/demo/models/retain`` (built once per test session, a few
seconds), and the retain model's report in ``outputs/demo/runs/retain/report.json``. ``LIT_UNLEARN_HOME``
points to a per-session temporary folder (``tests/conftest.py``). The blocks of a page run in page order in
that folder, so a page may train a model in one block and evaluate it in the next.

How a shell command runs: ``lit-unlearn ARGS`` and ``python -m lit_unlearn ARGS`` call
``lit_unlearn.cli.main(ARGS)`` in this process (one Lightning import for the whole file instead of one per
command); ``python FILE.py ARGS`` runs the file with ``runpy`` as ``__main__``; anything else (``ls``,
``test -f``, ``cat``) runs in ``bash``. Backslash continuations are joined and ``#`` comments dropped. A
``python`` block is executed with ``exec`` in a fresh namespace, so every block must be complete on its own.

Markers (an HTML comment on its own line before the opening fence; blank lines in between are allowed;
invisible when the Markdown is rendered):

* ``<!-- test: skip REASON -->``: the block is not run. REASON is required and says why, e.g. "GPU-only",
  "hub-only: downloads Llama-2-7b", "takes minutes: make demo", "installs packages".
* ``<!-- test: append ARGS -->``: ARGS are appended to every ``lit-unlearn``/``python`` command of the block
  (not to other shell commands such as ``ls``), to run it with tiny settings (``--trainer.max_steps 2``,
  ``--data.init_args.eval_max_samples 4``, ``--epochs 1``).
* ``<!-- test: same-as PATH -->``: the block shows (part of) the file PATH of the repository, which another
  block of the page runs; the block must appear in that file verbatim, so page and file cannot drift apart.

A marker that is neither of these fails the test, so a typo cannot silently skip a block.
"""
from __future__ import annotations

import contextlib
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import finetune_tiny

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RECIPES = sorted((ROOT / "configs" / "recipes").rglob("*.yaml"))
RUN_LANGUAGES = {"bash", "sh", "console", "python"}
MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<kind>\S+)\s*(?P<arg>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip: str | None = None
    append: list[str] = field(default_factory=list)
    same_as: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def extract_blocks(text: str, page: str) -> list[Block]:
    """The fenced blocks of a Markdown page with their markers (see the module docstring)."""
    blocks: list[Block] = []
    pending: list[tuple[str, str, int]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        if marker:
            pending.append((marker["kind"], marker["arg"], i + 1))
            i += 1
            continue
        fence = FENCE.match(line)
        if fence is None:
            if line.strip():
                pending = []  # a marker applies only to the block right after it
            i += 1
            continue
        language = fence["info"].strip().split(" ")[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            body.append(lines[j][len(fence["indent"]):] if lines[j].startswith(fence["indent"]) else lines[j])
            j += 1
        block = Block(page, i + 1, language, "\n".join(body))
        for kind, arg, at in pending:
            if kind == "skip":
                if not arg:
                    raise ValueError(f"{page}:{at}: `<!-- test: skip -->` needs a reason")
                block.skip = arg
            elif kind == "append":
                block.append += shlex.split(arg)
            elif kind == "same-as":
                if not arg:
                    raise ValueError(f"{page}:{at}: `<!-- test: same-as -->` needs a file path")
                block.same_as = arg
            else:
                raise ValueError(f"{page}:{at}: unknown marker `test: {kind}` (allowed: skip REASON, append ARGS, "
                                 "same-as PATH)")
        pending = []
        if language in RUN_LANGUAGES:
            blocks.append(block)
        i = j + 1
    return blocks


def shell_commands(block: Block) -> list[str]:
    """The commands of a shell block: continuations joined, comments and console output dropped."""
    lines = block.code.splitlines()
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


@contextlib.contextmanager
def working_directory(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def argv(args: list[str]):
    old = sys.argv
    sys.argv = args
    try:
        yield
    finally:
        sys.argv = old


def run_cli(args: list[str]) -> None:
    from lit_unlearn.cli import main

    try:
        main(args)
    except SystemExit as exit_info:  # --help, --print_config
        if exit_info.code not in (0, None):
            raise


def run_command(command: str, extra: list[str], where: str) -> None:
    words = shlex.split(command, comments=True)
    if not words:
        return
    if words[0] == "lit-unlearn":
        run_cli(words[1:] + extra)
    elif words[:3] in (["python", "-m", "lit_unlearn"], ["python3", "-m", "lit_unlearn"]):
        run_cli(words[3:] + extra)
    elif words[0] in ("python", "python3") and len(words) > 2 and words[1] == "-m":
        with argv(words[2:] + extra):
            try:
                runpy.run_module(words[2], run_name="__main__", alter_sys=True)
            except SystemExit as exit_info:
                if exit_info.code not in (0, None):
                    raise
    elif words[0] in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
        with argv(words[1:] + extra):
            try:
                runpy.run_path(words[1], run_name="__main__")
            except SystemExit as exit_info:
                if exit_info.code not in (0, None):
                    raise
    else:  # a plain shell command: `append` does not apply
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{where}: `{command}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def run_block(block: Block) -> None:
    if block.same_as is not None:
        shown = (ROOT / block.same_as).read_text()
        assert block.code.strip() in shown, f"{block.where}: the block is not a verbatim part of {block.same_as}"
        return
    if block.language == "python":
        code = compile(block.code, f"<{block.where}>", "exec")
        exec(code, {"__name__": "__doc_example__"})  # noqa: S102 - the documented example itself
        return
    for command in shell_commands(block):
        try:
            run_command(command, block.append, block.where)
        except Exception as error:
            raise AssertionError(f"{block.where}: `{command}` failed: {error!r}") from error


# -- the post-`make demo` working folder ----------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_like_folder(tmp_path_factory, builtin_tokenizer_path, finetuned_tiny) -> Path:
    """configs/, docs/examples/ and the demo's outputs (tiny models, retain report), built once."""
    from lit_unlearn.evaluation.suite import TOFUEvaluation

    root = tmp_path_factory.mktemp("after_make_demo")
    shutil.copytree(ROOT / "configs", root / "configs")
    shutil.copytree(ROOT / "docs" / "examples", root / "docs" / "examples")
    shutil.copytree(ROOT / "benchmarks", root / "benchmarks")
    models = root / "outputs" / "demo" / "models"
    shutil.copytree(finetuned_tiny, models / "target")
    shutil.copytree(finetuned_tiny, root / "outputs" / "demo" / "wmdp" / "models" / "target")  # demo-benchmarks'
    finetune_tiny(models / "retain", builtin_tokenizer_path, ["real_authors"], max_steps=20)
    TOFUEvaluation(str(models / "retain"), max_samples=4, max_new_tokens=8, batch_size=8, progress=False,
                   plots=False, out_dir=str(root / "outputs" / "demo" / "runs" / "retain")).run()
    return root


@pytest.fixture()
def page_folder(demo_like_folder, tmp_path) -> Path:
    folder = tmp_path / "checkout"
    shutil.copytree(demo_like_folder, folder, symlinks=True)
    return folder


# -- the tests ------------------------------------------------------------------------------------------
def test_marker_convention_is_enforced():
    text = "<!-- test: skip -->\n```bash\nls\n```\n"
    with pytest.raises(ValueError, match="needs a reason"):
        extract_blocks(text, "x.md")
    with pytest.raises(ValueError, match="unknown marker"):
        extract_blocks("<!-- test: skp GPU -->\n```bash\nls\n```\n", "x.md")
    blocks = extract_blocks(
        "<!-- test: append --a 1 -->\n\n```bash\nlit-unlearn fit \\\n  --b 2  # c\n# only a comment\n```\n"
        "text\n```yaml\nk: v\n```\n```console\n$ ls\noutput\n```\n", "x.md")
    assert [b.language for b in blocks] == ["bash", "console"]
    assert blocks[0].append == ["--a", "1"] and shell_commands(blocks[0]) == ["lit-unlearn fit    --b 2  # c"]
    assert shell_commands(blocks[1]) == ["ls"] and blocks[1].append == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page, page_folder):
    blocks = [b for b in extract_blocks(page.read_text(), str(page.relative_to(ROOT))) if b.skip is None]
    if not blocks:
        pytest.skip(f"{page.name} has no runnable examples")
    with working_directory(page_folder):
        for block in blocks:
            run_block(block)


# -- recipes --------------------------------------------------------------------------------------------
def test_there_are_recipes():
    names = {p.relative_to(ROOT / "configs" / "recipes").as_posix() for p in RECIPES}
    for model in ("llama2-7b-chat", "llama3.2-1b-instruct"):
        for objective in ("npo", "graddiff", "simnpo", "idkdpo", "rmu", "wga", "tnpo", "satimp", "npo_mrd", "cga"):
            assert f"tofu/{model}/{objective}.yaml" in names


def tiny_overrides(recipe: Path, target: str, out: Path) -> list[str]:
    """Swap a recipe's model, data source and hardware for the tiny CPU setup; everything else stays as shipped."""
    config = yaml.safe_load(recipe.read_text())
    args = [
        f"--model.init_args.model_name_or_path={target}", f"--data.init_args.tokenizer={target}",
        "--data.init_args.source=builtin:tofu-mini", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.num_nodes=1", "--trainer.strategy=auto", "--trainer.precision=32-true",
        "--trainer.max_steps=1", "--trainer.max_epochs=1", f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false", f"--model.init_args.save_dir={out / 'model'}",
    ]
    if "forget_split" in config["data"].get("init_args", {}):  # a smaller forget set: a shorter reference pass
        args += ["--data.init_args.forget_split=forget01", "--data.init_args.retain_split=retain99"]
    if "layer" in config["model"].get("init_args", {}):
        args.append("--model.init_args.layer=null")  # the recipe's block index is for the real model's depth
    if "MRDCurriculum" in str(config["trainer"].get("callbacks")):
        args.append("--trainer.callbacks.num_samples=2")
    return args


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "configs" / "recipes")))
def test_recipe_instantiates(recipe, demo_like_folder, tmp_path):
    """Every recipe parses and its trainer, model and datamodule are constructed (hyperparameters validated)."""
    from lit_unlearn.cli import lightning_cli

    target = str(demo_like_folder / "outputs" / "demo" / "models" / "target")
    with working_directory(tmp_path):
        cli = lightning_cli(["--config", str(recipe), *tiny_overrides(recipe, target, tmp_path)], run=False)
    shipped = yaml.safe_load(recipe.read_text())
    assert type(cli.model).__name__ == shipped["model"]["class_path"].rsplit(".", 1)[1]
    assert cli.trainer.accumulate_grad_batches == shipped["trainer"]["accumulate_grad_batches"]


# the two models' recipes differ only in model names and paths (checked above), so one step of `fit` per
# objective runs on the smaller model's recipes
FIT_RECIPES = [p for p in RECIPES if p.parent.name == "llama3.2-1b-instruct"]


@pytest.mark.parametrize("recipe", FIT_RECIPES, ids=lambda p: str(p.relative_to(ROOT / "configs" / "recipes")))
def test_recipe_composes_with_fit(recipe, demo_like_folder, tmp_path):
    """The recipe as shipped, with only the model, data source and hardware swapped, runs one step of `fit`."""
    target = str(demo_like_folder / "outputs" / "demo" / "models" / "target")
    with working_directory(tmp_path):
        run_cli(["fit", "--config", str(recipe), *tiny_overrides(recipe, target, tmp_path)])
    assert (tmp_path / "model" / "config.json").is_file()
