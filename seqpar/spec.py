"""The experiment spec: strict YAML -> typed, frozen config, with `--set` overrides.

Every user mistake becomes a `SpecError` whose message is one line naming the
file, the dotted key and what was expected; the CLI turns it into exit code 2
before anything is written.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_serializer, field_validator, model_validator

from seqpar.config import Config, KeyedError
from seqpar.config.plugins import PluginError, check_module_name, import_module, load_entry_points, use_dir
from seqpar.config.registry import choice_of, field_annotation, tagged_union
from seqpar.methods import METHODS
from seqpar.methods.memoryless import BASELINE_LABEL
from seqpar.model.cells import CELLS
from seqpar.tasks import TASKS

if TYPE_CHECKING:  # a union built at import time from a registry: opaque to the type checker
    TaskSpec = Any
    CellSpec = Any
    MethodSpec = Any
else:
    TaskSpec = tagged_union(TASKS)
    CellSpec = tagged_union(CELLS)
    MethodSpec = tagged_union(METHODS)


class SpecError(Exception):
    """A problem with the user's spec or command line; the message is one line.

    `key` (the dotted key to blame) and `source` (the message's leading "file" part) are set
    when known, so `with_yaml_line` can add the key's line in the file.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        super().__init__(message)
        self.key = key
        self.source = source


# Every layer is its own traced program piece (the stack is a Python loop over layers), so compile
# time grows with L; far beyond what anyone stacks, and a bound a typo cannot hang the estimate on.
MAX_LAYERS = 256


class BlockConfig(Config):
    """What wraps each layer of a stack: minGRU's pre-norm residual block, or ParaRNN's (`pararnn`)."""

    omit_defaults = ("style",)
    style: Literal["plain", "pararnn"] = Field(
        default="plain",
        description="plain: the stream between layers, with the residual and norm below; pararnn: ParaRNN's layer block "
        "around every cell (RMSNorm, in-projection to the cell's input and a gate, SiLU, the cell, RMSNorm of its output "
        "times the gate, out-projection, a residual with a learnable scale, a SwiGLU MLP, and a final RMSNorm; written "
        "`block: pararnn`)",
    )
    residual: bool = Field(default=False, description="add each layer's input stream to its output (layers above the first)")
    norm: Literal["none", "layer", "rms"] = Field(default="none", description="norm of each upper layer's input: none, layer or rms")

    @model_validator(mode="before")
    @classmethod
    def _named(cls, v: Any) -> Any:
        return {"style": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _own_parts(self):
        if self.style == "pararnn":
            for key in ("residual", "norm"):
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise KeyedError(key, "the pararnn block has its own residual and norms; give block: pararnn alone")
        return self


class ModelConfig(Config):
    # One layer is recorded as before stacks existed, so its records, hashes and resumes are unchanged.
    omit_defaults = ("layers", "block")
    cell: CellSpec = Field(default="gru", description="recurrent cell: a type name, or {type: NAME, ...its options}")
    hidden: int = Field(default=64, gt=0, description="hidden size")
    layers: int = Field(
        default=1,
        gt=0,
        le=MAX_LAYERS,
        description=f"L: cells stacked, each reading the layer below's output, the readout the top (at most {MAX_LAYERS})",
    )
    block: BlockConfig = Field(
        default=BlockConfig(),
        description="between layers: {residual: bool, norm: none|layer|rms} (layers >= 2), or pararnn: ParaRNN's block around every layer",
    )

    @field_validator("cell", mode="before")
    @classmethod
    def _bare_name(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _block_between_layers(self):
        if self.layers == 1 and self.block.style == "plain":
            for key in ("residual", "norm"):
                if getattr(self.block, key) != BlockConfig.model_fields[key].default:
                    raise KeyedError(f"block.{key}", "only meaningful with layers >= 2 (a block sits between layers; layers is 1)")
        return self

    @field_serializer("cell")
    def _record_bare_name(self, v: Any) -> Any:  # a registered CellConfig
        # A cell with default options is recorded as its bare name, as written before cells had options.
        return v.type if v.is_default() else v.model_dump()

    def structure(self) -> dict[str, Any]:
        """The stack's keyword arguments of `seqpar.model.model.build_model`."""
        return {"layers": self.layers, "residual": self.block.residual, "norm": self.block.norm, "block": self.block.style}


class TrainConfig(Config):
    steps: int = Field(gt=0, description="optimizer steps per method")
    batch_size: int = Field(gt=0, description="sequences per minibatch")
    eval_every: int = Field(50, gt=0, description="rollout evaluation interval (steps)")
    log_every: int | None = Field(None, gt=0, description="training-metric logging interval (default: eval_every)")
    target_loss: float | None = Field(None, gt=0, allow_inf_nan=False, description="validation rollout loss to reach")
    target_fraction: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="instead of target_loss: reach this fraction of the task's memoryless baseline formula (one setting across tasks)",
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="stop a method before its training clock (compile and evaluation excluded) passes this many seconds "
        "(stop_reason max_seconds); default: train.steps decides alone",
    )
    checkpoint_every: int | None = Field(
        None, gt=0, description="save a resumable checkpoint every N steps (default: only on SIGINT/SIGTERM)"
    )
    devices: int | Literal["all"] = Field(
        1, description="devices on the mesh's data axis: a count, or 'all' (every device of every process)"
    )
    baseline_trained: bool | Literal["auto"] = Field(
        "auto",
        description="also train the memoryless baseline (the same model with its recurrence cut) for this budget; "
        "auto: only for a task without a baseline formula",
    )
    sample_strata: int | None = Field(
        None,
        gt=0,
        description="contiguous strata each minibatch draws from evenly (default: the device count); "
        "fix it for identical batches on any device count",
    )
    lle_sequences: int = Field(
        16,
        ge=0,
        description="validation sequences along whose rollouts every evaluation estimates the recurrence's largest "
        "Lyapunov exponent (eval metric lle, its standard error over the sequences lle_stderr; 3 random tangent "
        "vectors each); 0: not measured",
    )
    lle_burn_in: int | None = Field(
        None,
        ge=0,
        description="steps of each LLE rollout run but not counted (the tangent vectors' alignment with the most "
        "expanding direction is a transient); default: a quarter of the sequence",
    )
    omit_defaults = ("lle_burn_in",)

    @model_validator(mode="after")
    def _one_target(self):
        if self.target_loss is not None and self.target_fraction is not None:
            raise KeyedError("target_fraction", "give target_loss or target_fraction, not both")
        return self

    @field_validator("devices")
    @classmethod
    def _positive_devices(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"must be a positive device count or 'all' (got {v})")
        return v


class Spec(Config):
    omit_defaults = ("plugins", "spec_dir")  # recorded only when the spec uses user code
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100, description="experiment name (directory-safe)")
    seed: int = Field(0, ge=0, description="root PRNG key, split by purpose: data, initial weights, training")
    plugins: list[str] = Field(
        default_factory=list,
        description="modules to import before the spec is validated (each registers its own cells, tasks or methods): "
        "looked up in the spec file's directory first, then on sys.path",
    )
    spec_dir: str | None = Field(
        None,
        description="directory the spec's plugins and MODULE:NAME references are imported from first (default: the spec "
        "file's directory; recorded as an absolute path when the spec uses one, so a resume or a worker finds them)",
    )
    task: TaskSpec = Field(description="the task: data, loss, accuracy and memoryless baseline, chosen by type")
    model: ModelConfig = Field(ModelConfig(), description="the recurrent model every method trains")
    train: TrainConfig = Field(description="the budget, evaluation and targets shared by every method")
    methods: list[MethodSpec] = Field(min_length=1, description="the training methods, each chosen by type, run in order")

    @field_validator("plugins")
    @classmethod
    def _module_names(cls, v: list[str]) -> list[str]:
        for name in v:
            try:
                check_module_name(name)
            except PluginError as e:
                raise ValueError(str(e)) from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _split_seed_from_seed(cls, raw: Any) -> Any:
        """A task that splits a fixed dataset by a seeded shuffle (`split_seed`) takes the spec's
        seed unless given its own; the resolved spec records it."""
        if not isinstance(raw, dict) or not isinstance(raw.get("task"), dict):
            return raw
        task, seed = raw["task"], raw.get("seed", cls.model_fields["seed"].default)
        task_cls = TASKS.get(task["type"]) if task.get("type") in TASKS else None
        if task_cls is not None and "split_seed" in task_cls.model_fields and task.get("split_seed") is None:
            if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0:
                return {**raw, "task": {**task, "split_seed": seed}}
        return raw

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.train.batch_size > self.task.train_sequences:
            raise KeyedError(
                "train.batch_size",
                f"must not exceed task.train_sequences={self.task.train_sequences} (got {self.train.batch_size})",
            )
        self._check_data_parallel()
        seen: dict[str, int] = {}
        for i, m in enumerate(self.methods):
            if m.display_label == BASELINE_LABEL:
                raise KeyedError(
                    f"methods.{i}.label", f"{BASELINE_LABEL!r} is reserved for the trained memoryless baseline; choose another label"
                )
            if m.display_label in seen:
                raise KeyedError(
                    f"methods.{i}.label",
                    f"duplicate method label {m.display_label!r} (also methods.{seen[m.display_label]}); give each a distinct label",
                )
            seen[m.display_label] = i
        return self

    def _check_data_parallel(self) -> None:
        """Rows split evenly over strata and devices (see `seqpar.sharding`); `all` is checked at run time."""
        tr, task = self.train, self.task
        devices = tr.devices if isinstance(tr.devices, int) else None
        strata = tr.sample_strata or devices
        if strata is not None:
            name = "train.sample_strata" if tr.sample_strata else "train.devices"
            for key, n in (("task.train_sequences", task.train_sequences), ("train.batch_size", tr.batch_size)):
                if n % strata:
                    raise KeyedError(name, f"must divide {key}={n} (got {strata})")
        if devices is not None:
            if tr.sample_strata and tr.sample_strata % devices:
                raise KeyedError("train.sample_strata", f"must be a multiple of train.devices={devices} (got {tr.sample_strata})")
            for key, n in (("task.val_sequences", task.val_sequences), ("task.test_sequences", task.test_sequences)):
                if n % devices:
                    raise KeyedError("train.devices", f"must divide {key}={n} (got {devices})")

    @property
    def log_every(self) -> int:
        return self.train.log_every or self.train.eval_every


# ----------------------------------------------------------------------------- loading


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """One spec; a spec with a `sweep:` block is a grid of specs: load it with `seqpar.sweep.execute.load_plan`."""
    path = Path(path)
    raw = read_yaml(path)
    if "sweep" in raw:
        raise SpecError(
            f"{path}: sweep: this spec expands to a grid of runs; `seqpar run` and `seqpar validate` take it, load_spec does not"
        )
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value, source=f"--set {item}")
    try:
        return validate_spec(raw, source=str(path), base_dir=path.parent)
    except SpecError as e:
        raise blame_overrides(e, overrides) from None


MAX_SPEC_BYTES = 1 << 20  # a spec is a few KB; reading stops here (a device such as /dev/zero never ends)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES >> 20} MiB; a spec is a few KB of YAML")
        text = data.decode()
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory, expected a YAML spec file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read ({e})") from None
    try:
        raw = load_yaml(text, source=str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{path}:{where}: invalid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the top level must be a mapping of keys (name, seed, task, ...), got {type(raw).__name__}")
    yaml_key_lines(text, source=str(path))  # refuses duplicate keys, which YAML loaders silently drop
    return raw


# A spec, sweep lists included, holds a few hundred values and nests a few levels. Everything
# downstream (validation, the key-line walk, deep copies per sweep point) walks the document with
# its aliases expanded, so a document is refused when that expansion is large (a "billion laughs":
# 9 aliases of 9 aliases of ... is a few lines of YAML and 10^9 values), deep, or recursive.
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


def load_yaml(text: str, source: str = "spec") -> Any:
    """YAML text -> Python values (safe types only), refusing documents that expand too far.

    Raises `yaml.YAMLError` for malformed YAML and `SpecError` for a document too large once
    its aliases are expanded, nested too deeply, or containing itself."""
    root = _compose(text, source)
    if root is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _compose(text: str, source: str) -> yaml.Node | None:
    # PyYAML's scanner takes time quadratic in the depth of flow nesting ([[[[...) and its composer
    # recurses per level: count brackets first (an overcount at worst, from brackets in strings).
    if text.count("[") + text.count("{") > MAX_YAML_DEPTH:
        depth = 0
        for c in text:
            if c in "[{":
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise SpecError(f"{source}: invalid YAML: nested more than {MAX_YAML_DEPTH} levels deep; a spec is a few levels deep")
            elif c in "]}":
                depth = max(depth - 1, 0)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise SpecError(f"{source}: invalid YAML: nested more than {MAX_YAML_DEPTH} levels deep; a spec is a few levels deep") from None
    if root is not None:
        _check_expansion(root, source)
    return root


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Count the values of the document as if every alias were copied out; each distinct node is
    visited once (its expanded size is remembered), so a bomb is refused in microseconds."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise SpecError(f"{source}: invalid YAML: an alias refers to a value that contains it (a recursive structure)")
        if depth > MAX_YAML_DEPTH:
            raise SpecError(f"{source}: invalid YAML: nested more than {MAX_YAML_DEPTH} levels deep; a spec is a few levels deep")
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [x for pair in node.value for x in pair]
        else:
            children = []
        open_.add(id(node))
        n = 1
        for child in children:
            n += size(child, depth + 1)
            if n > MAX_YAML_VALUES:
                raise SpecError(
                    f"{source}: YAML aliases expand this document to more than {MAX_YAML_VALUES} values; "
                    "a spec holds a few hundred (is an alias repeated inside aliases?)"
                )
        open_.discard(id(node))
        sizes[id(node)] = n
        return n

    size(root, 0)


def yaml_key_lines(text: str, source: str = "spec") -> dict[str, int]:
    """1-based line of every dotted key (`train.steps`, `methods.1.optimizer.lr`) in a YAML text.

    Walks the composed node tree, whose nodes keep their marks (its size is bounded by
    `_compose`). A key given twice in one mapping is a `SpecError`: YAML loaders keep only
    the last, silently.
    """
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode) or k.value == "<<":
                    continue
                key, line = f"{prefix}{k.value}", k.start_mark.line + 1
                if k.value in seen:
                    raise SpecError(
                        f"{source}: line {line}: {key}: duplicate key (first given on line {seen[k.value]}); give each key once", key=key
                    )
                seen[k.value] = lines[key] = line
                walk(v, key + ".")
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[f"{prefix}{i}"] = v.start_mark.line + 1
                walk(v, f"{prefix}{i}.")

    root = _compose(text, source)
    if root is not None:
        walk(root, "")
    return lines


def with_yaml_line(err: SpecError, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """`err`'s message with the YAML line of its key in `path` ("x.yaml: line 7: train.steps: ...").

    Keys set by `--set` get no line: their value is not in the file. A missing key is placed
    at the line of its nearest parent that is present."""
    msg = str(err)
    if not err.key or not err.source or not msg.startswith(err.source + ": ") or msg.startswith(err.source + ": line "):
        return msg
    overridden = [item.partition("=")[0].strip() for item in overrides]
    if any(err.key == k or err.key.startswith(k + ".") for k in overridden):
        return msg
    try:
        lines = yaml_key_lines(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, SpecError):
        return msg
    parts = err.key.split(".")
    while parts and ".".join(parts) not in lines:
        parts.pop()
    if not parts:
        return msg
    return f"{err.source}: line {lines['.'.join(parts)]}: {msg[len(err.source) + 2 :]}"


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {shown(item, quote=False)}: expected KEY=VALUE with no space around '=' (like --set train.steps=50)")
    try:
        return key.strip(), load_yaml(value, source=f"--set {item}")
    except yaml.YAMLError:
        raise SpecError(f"--set {item}: the value is not valid YAML") from None


def blame_overrides(err: SpecError, overrides: list[str] | tuple[str, ...]) -> SpecError:
    """`err` restated as the `--set` assignment's fault when its key is one that assignment set
    (or made up: `--set trian.steps=50` makes the unknown key `trian`), so the file is not blamed."""
    if not err.key:
        return err
    for item in overrides:
        key = item.partition("=")[0].strip()
        if err.key == key or err.key.startswith(key + ".") or key.startswith(err.key + "."):
            msg = str(err)
            if err.source and msg.startswith(err.source + ": "):
                msg = msg[len(err.source) + 2 :]
            source = f"--set {shown(item, quote=False)}"
            return SpecError(f"{source}: {msg}", key=err.key, source=source)
    return err


def set_dotted(raw: dict[str, Any], key: str, value: Any, *, source: str) -> None:
    """Set `a.b.0.c` in nested dicts/lists; intermediate dicts are created, list indices must exist."""
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError(f"{source}: {where}: expected a list index below {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise SpecError(f"{source}: {'.'.join(parts[:i])} is a {type(node).__name__}, cannot set {part!r} inside it")


def validate_spec(raw: dict[str, Any], source: str = "spec", base_dir: str | Path | None = None, data: Any = None) -> Spec:
    """`raw` as a validated `Spec`, or a one-line `SpecError`.

    `base_dir`: the directory the spec's relative paths and modules resolve against (a spec
    file's own directory; default the working directory; a recorded `spec_dir` wins). User
    code comes first: installed plugins, then the spec's `plugins:` (see
    `seqpar.config.plugins`), so every `type:` they register is valid in this very spec.
    `data`: arrays given in memory to a `dataset` task without `path` (`seqpar.run(..., data=)`)."""
    raw, directory = _user_code(raw, source, base_dir)
    try:
        return Spec.model_validate(raw, context={"base_dir": directory, "data": data})
    except ValidationError as e:
        raise SpecError(f"{source}: {format_validation_error(e, raw)}", key=error_key(ordered_errors(e)[0], raw), source=source) from None


def with_spec_dir(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """A spec read from `path`, its directory recorded as `spec_dir` (absolute) first: a plan written
    elsewhere (a sweep's sweep.yaml, a study's tune.yaml) resolves its modules and paths where the file was."""
    return {"spec_dir": str(spec_directory(raw, path.parent)), **{k: v for k, v in raw.items() if k != "spec_dir"}}


def spec_directory(raw: Any, base_dir: str | Path | None) -> Path:
    """The directory a spec's modules and relative paths resolve against: its recorded `spec_dir`
    (relative to `base_dir`), else `base_dir`, else the working directory; absolute."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    given = raw.get("spec_dir") if isinstance(raw, dict) else None
    return Path(os.path.abspath(base / given if isinstance(given, str) and given else base))


def uses_user_code(raw: Any) -> bool:
    """True when a spec names modules of its own (`plugins:`, a `type: function` block anywhere)."""
    if isinstance(raw, dict):
        if raw.get("plugins") or raw.get("type") == "function":
            return True
        return any(uses_user_code(v) for v in raw.values())
    if isinstance(raw, list):
        return any(uses_user_code(v) for v in raw)
    return False


def _user_code(raw: Any, source: str, base_dir: str | Path | None) -> tuple[Any, Path]:
    """Import installed plugins and the spec's `plugins:`; record `spec_dir` when the spec uses it."""
    try:
        load_entry_points()
    except PluginError as e:
        raise SpecError(str(e)) from None
    directory = spec_directory(raw, base_dir)
    if not isinstance(raw, dict):
        return raw, directory
    plugins = raw.get("plugins")
    if isinstance(plugins, list):
        for i, name in enumerate(plugins):
            try:
                import_module(name, directory)
            except PluginError as e:
                raise SpecError(f"{source}: plugins.{i}: {e}", key=f"plugins.{i}", source=source) from None
    if uses_user_code(raw):
        use_dir(directory)  # a worker, a resume or a later import finds the modules where this spec did
        raw = {**raw, "spec_dir": str(directory)}
    elif "spec_dir" in raw:
        raw = {k: v for k, v in raw.items() if k != "spec_dir"}  # nothing resolves against it: not part of the run
    return raw, directory


# ----------------------------------------------------------------------------- error messages

# Top-level blocks read before validation (`sweep:` by seqpar.sweep.plan, `tune:` by seqpar.tune.space);
# an unknown top-level key lists them with the Spec's own fields.
TOP_LEVEL_BLOCKS = ("sweep", "tune")


def ordered_errors(err: ValidationError) -> list[Any]:  # pydantic's ErrorDetails dicts
    """Unknown keys first: a misspelt key also makes the real one "missing", and the
    misspelling (with its "did you mean") is the message that helps."""
    return sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")


def format_validation_error(err: ValidationError, raw: Any, root: type[BaseModel] | None = None) -> str:
    """One line for a pydantic error of `raw` validated as `root` (default: the whole `Spec`)."""
    errors = ordered_errors(err)
    first = errors[0]
    msg = _describe(first, raw, root)
    more = len(errors) - 1
    return msg + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def error_key(e: dict[str, Any], raw: Any) -> str:
    """The dotted key a pydantic error blames (as `_describe` names it)."""
    key = _dotted(e["loc"], raw)
    ke = e.get("ctx", {}).get("error")
    if e["type"] == "value_error" and isinstance(ke, KeyedError):
        return f"{key}.{ke.key}" if key else ke.key
    if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return f"{key}.type"
    return key


def _describe(e: dict[str, Any], raw: Any, root: type[BaseModel] | None = None) -> str:
    key = _dotted(e["loc"], raw)
    kind = e["type"]
    if kind == "value_error" and isinstance(e.get("ctx", {}).get("error"), KeyedError):
        ke = e["ctx"]["error"]
        return f"{key + '.' if key else ''}{ke.key}: {ke.msg}"
    if kind == "extra_forbidden":
        valid = _valid_keys(e["loc"], raw, root)
        if root is None and len(e["loc"]) == 1:
            valid += [k for k in TOP_LEVEL_BLOCKS if k not in valid]
        leaf = key.rsplit(".", 1)[-1]
        return f"{shown(key, quote=False)}: unknown key{_did_you_mean(leaf, valid)} (valid keys: {', '.join(valid)})"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "union_tag_not_found":
        return f"{key}.type: missing; expected one of: {', '.join(_union_tags(e['loc'], raw, root))}"
    if kind == "union_tag_invalid":
        tags, given = _union_tags(e["loc"], raw, root), e["input"].get("type")
        close = difflib.get_close_matches(given, tags, n=1) if isinstance(given, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{key}.type: unknown type {shown(given)}{hint}; expected one of: {', '.join(tags)}"
    msg = e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    if isinstance(got, str) and repr(got) in msg:  # a validator quoted the value: cut it there
        return f"{key or '<top level>'}: {msg.replace(repr(got), shown(got))}"
    tail = "" if isinstance(got, (dict, list)) or "got " in msg else f" (got {shown(got)})"
    return f"{key or '<top level>'}: {msg}{tail}"


def _did_you_mean(given: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(given, valid, n=1) if isinstance(given, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""


SHOWN_CHARS = 60  # a rejected value is quoted up to this length: a 100 KB label must not fill the terminal


def shown(value: Any, quote: bool = True, limit: int = SHOWN_CHARS) -> str:
    """A value as an error message quotes it (`repr`, or as is with `quote=False`), cut to `limit`
    characters with the full length said: the message stays one readable line."""
    text = repr(value) if quote else str(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[: limit - 1]}… ({size})"


def _dotted(loc: tuple, raw: Any) -> str:
    """Dotted key of a pydantic error location, dropping union tags and validator labels."""
    parts, node = [], raw
    for item in loc:
        if isinstance(node, dict) and item in node:
            parts.append(str(item))
            node = node[item]
        elif isinstance(node, list) and isinstance(item, int) and item < len(node):
            parts.append(str(item))
            node = node[item]
        elif isinstance(item, str) and (not isinstance(node, dict) or "[" in item or item == node.get("type")):
            continue  # a tagged-union tag or a validator label, not a key the user wrote
        else:
            parts.append(str(item))
            node = None
    return ".".join(parts)


def _annotation_at(loc: tuple, raw: Any, root: type[BaseModel] | None = None) -> Any:
    """The (unresolved) type annotation that validates the value at `loc`."""
    ann: Any = root or Spec
    node = raw
    for item in loc:
        if isinstance(node, list) and isinstance(item, int):
            node = node[item] if item < len(node) else None
            args = typing.get_args(_pick(ann, None))
            ann = args[0] if args else ann
            continue
        if typing.get_origin(_pick(ann, None)) is dict and isinstance(node, dict):  # a mapping of configs by name
            ann = typing.get_args(_pick(ann, None))[1]
            node = node.get(item)
            continue
        cls = _pick(ann, node)
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or item not in cls.model_fields:
            continue  # a union tag or validator label
        ann = field_annotation(cls.model_fields[item])
        node = node.get(item) if isinstance(node, dict) else None
    return ann


def _valid_keys(loc: tuple, raw: Any, root: type[BaseModel] | None = None) -> list[str]:
    """Field names of the config class that owns the unknown key at `loc`."""
    node = raw
    for item in loc[:-1]:
        if _has(node, item):  # anything else is a union tag or validator label: stay on this node
            node = node[item]
    cls = _pick(_annotation_at(loc[:-1], raw, root), node)
    return [f.alias or k for k, f in cls.model_fields.items()] if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _union_tags(loc: tuple, raw: Any, root: type[BaseModel] | None = None) -> list[str]:
    ann = _annotation_at(loc, raw, root)
    if typing.get_origin(ann) in (typing.Union, types.UnionType):  # an optional block, `Union | None`: look inside
        inner = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = inner[0] if len(inner) == 1 else ann
    choice = choice_of(ann)
    if choice is not None:  # a registry's choice: its names now (registered at any time)
        return choice.registry.names()
    while typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    members = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    return [
        str(m.model_fields["type"].default)
        for m in members
        if isinstance(m, type) and issubclass(m, BaseModel) and "type" in m.model_fields
    ]


def _has(node: Any, item: Any) -> bool:
    return (isinstance(node, dict) and item in node) or (isinstance(node, list) and isinstance(item, int) and item < len(node))


def _pick(annotation: Any, node: Any) -> Any:
    """Resolve Optional/list/Annotated/tagged unions down to the config class for `node`."""
    while True:
        choice = choice_of(annotation)
        if choice is not None:  # the class registered under the node's `type:` (any, to name its keys)
            tag = node.get("type") if isinstance(node, dict) else None
            return choice.registry.get(tag) if isinstance(tag, str) and tag in choice.registry else choice.members()[0]
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            tag = node.get("type") if isinstance(node, dict) else None
            chosen = [
                m
                for m in members
                if isinstance(m, type) and issubclass(m, BaseModel) and m.model_fields.get("type") and m.model_fields["type"].default == tag
            ]
            annotation = chosen[0] if chosen else members[0]
        elif origin is list:
            return annotation  # resolved when the list index is visited
        else:
            return annotation


def spec_to_yaml(spec: Spec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
