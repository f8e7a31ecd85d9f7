"""Settings declared once: a configuration field and everything said about it.

Each field of the configuration dataclasses (model.ModelConfig, config.AugmentConfig,
config.TrainConfig, config.InferenceConfig, config.PredictOptions) is made by
:func:`setting`, which stores a :class:`Setting` in the field's metadata: its rule (what
values are valid, and how an error states it), its help, the commands whose flags set it,
and how a flag's value becomes the field's. From these declarations, and nowhere else, come
the flags of ``biounet train``, ``predict`` and ``export`` (:func:`add_flags`), the
validation of every configuration (:func:`validate`), which settings ``--resume`` keeps
(:func:`fixed_on_resume`), how flags reshape a preset (:func:`changes`), the listing of
``biounet info`` (:func:`listing`) and the napari forms (:func:`form_options`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

Command = str  # "train" | "predict" | "export"


@dataclass(frozen=True)
class Rule:
    """What a valid value is: ``test(value)``, stated in errors as ``"<name> must be
    <text>, got <value>"``. ``low`` / ``high``: the numeric bounds, for forms."""

    test: Callable[[object], bool]
    text: str
    values: tuple = ()  # the allowed values of a choice
    low: float | None = None
    high: float | None = None


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def one_of(values, text: str | None = None) -> Rule:
    """A choice among ``values``."""
    values = tuple(values)
    return Rule(lambda v: v in values, text or f"one of {values}", values=values)


def at_least(low: float, unit: str = "") -> Rule:
    """A finite number >= ``low`` (NaN fails)."""
    return Rule(lambda v: _number(v) and low <= v < math.inf, f">= {low:g}{unit}", low=low)


def above(low: float, unit: str = "") -> Rule:
    """A finite number > ``low``."""
    return Rule(lambda v: _number(v) and low < v < math.inf, f"> {low:g}{unit}", low=low)


def within(low: float, high: float, ends: str = "[]", text: str | None = None) -> Rule:
    """A number between ``low`` and ``high``; ``ends`` "[]", "[)", "(]" or "()" says which
    bounds belong to the range."""

    def test(v) -> bool:
        if not _number(v):
            return False
        lo = low <= v if ends[0] == "[" else low < v
        hi = v <= high if ends[1] == "]" else v < high
        return lo and hi

    shown = text or f"in {ends[0]}{low:g}, {high:g}{ends[1]}"
    return Rule(test, shown, low=low, high=high)


def integers(low: int, high: int | None = None) -> Rule:
    """A whole number >= ``low`` (and <= ``high``)."""
    text = f">= {low}" if high is None else f"in {low}..{high}"
    return Rule(lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and low <= v
                and (high is None or v <= high), text, low=low, high=high)  # fmt: skip


BOOLEAN = Rule(lambda v: isinstance(v, bool), "True or False")


def optional(rule: Rule) -> Rule:
    """``rule``, or None (not set)."""
    return dataclasses.replace(rule, test=lambda v: v is None or rule.test(v))


@dataclass(frozen=True)
class Setting:
    """All that is said about one configuration field (see :func:`setting`)."""

    help: str
    rule: Rule | None = None
    commands: tuple[Command, ...] = ()
    flag: str | None = None  # default: --field-name
    metavar: str | None = None
    parse: Callable | None = None  # the flag's argparse type (default: the field's type)
    choices: tuple | None = None  # the flag's choices (default: the rule's values)
    to_field: Callable | None = None  # flag value -> {field: value} changes of its config
    resume: bool = False  # --resume may change it
    negatable: bool = True  # a boolean flag has --no-FLAG too
    flag_default: object = None  # the flag's default (None: not given: the preset's or model's)
    label: str | None = None  # its name in `biounet info` (default: the field's)
    form: bool = True  # shown in napari's forms (False: paths and validation, which the
    # widget's layers decide)


def setting(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, help: str,
            **about) -> dataclasses.Field:  # fmt: skip
    """A dataclass field declared with ``help`` and the :class:`Setting` options ``about``."""
    return field(default=default, default_factory=default_factory,
                 metadata={"setting": Setting(help=help, **about)})  # fmt: skip


def about(f: dataclasses.Field) -> Setting | None:
    """The field's declaration, or None for a field that is no setting."""
    return f.metadata.get("setting")


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check(cls, name: str, value, label: str | None = None) -> None:
    """ValueError ``"<label> must be <rule>, got <value>"`` unless ``value`` suits the
    field ``name`` of ``cls`` (``label``: how the caller names it, e.g. its flag)."""
    rule = about(_field(cls, name)).rule
    if rule is None:
        return
    try:
        ok = bool(rule.test(value))
    except TypeError:  # e.g. a string where a number belongs
        ok = False
    if not ok:
        raise ValueError(f"{label or name} must be {rule.text}, got {_shown(value)}")


def validate(config) -> None:
    """Check every declared field of the dataclass instance ``config`` (see :func:`check`)."""
    for f in fields(config):
        if about(f) is not None:
            check(type(config), f.name, getattr(config, f.name))


def _field(cls, name: str) -> dataclasses.Field:
    return next(f for f in fields(cls) if f.name == name)


# ---------------------------------------------------------------------------------------
# Flags


@dataclass(frozen=True)
class Flag:
    """A command-line flag of a setting: ``--flag`` stores into ``dest``; ``path`` is the
    field's place in a preset (e.g. ("train", "augment", "invert"))."""

    flag: str
    dest: str
    path: tuple[str, ...]
    setting: Setting
    type: object


def flags(sections: dict[str, type], command: Command) -> list[Flag]:
    """The flags ``command`` takes for the settings of ``sections`` (name -> dataclass; a
    nested dataclass field is walked into), in declaration order."""
    found = []
    for name, cls in sections.items():
        for path, f, s, kind in _walk(cls, (name,)):
            if command in s.commands:
                flag = s.flag or "--" + f.name.replace("_", "-")
                found.append(Flag(flag, flag[2:].replace("-", "_"), path, s, kind))
    dests = [f.dest for f in found]
    assert len(dests) == len(set(dests)), f"{command}: two settings share a flag"
    return found


def _walk(cls, prefix: tuple[str, ...]) -> Iterator[tuple]:
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from _walk(kind, (*prefix, f.name))
        elif about(f) is not None:
            yield (*prefix, f.name), f, about(f), kind


def _base_type(kind) -> type:
    """int for ``int | None``, float for ``float | str`` (the first non-None member)."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return next(k for k in typing.get_args(kind) if k is not type(None))
    return kind


def add_flags(parser: argparse.ArgumentParser, found: list[Flag],
              help_of: Callable[[Flag], str] | None = None) -> None:  # fmt: skip
    """Add ``found`` to ``parser``; ``help_of`` may reword a flag's help for the command."""
    for f in found:
        s, kind = f.setting, _base_type(f.type)
        text = help_of(f) if help_of else s.help
        options = {"dest": f.dest, "help": text.replace("%", "%%"), "default": s.flag_default}
        if kind is bool and s.negatable:
            options["action"] = argparse.BooleanOptionalAction
        elif kind is bool:
            options.update(action="store_const", const=True)
        else:
            choices = s.choices or (s.rule.values if s.rule else ()) or None
            options.update(type=s.parse or kind, metavar=s.metavar, choices=choices)
            if choices:
                options.pop("metavar")
        parser.add_argument(f.flag, **options)


def given(args: argparse.Namespace, found: list[Flag]) -> dict[str, object]:
    """The flags of ``found`` given on the command line: dest -> value."""
    return {f.dest: getattr(args, f.dest) for f in found
            if getattr(args, f.dest, None) is not None}  # fmt: skip


def sections(found: list[Flag], values: dict[str, object]) -> dict[str, dict[str, object]]:
    """``values`` (dest -> value) grouped by the section their settings live in, as field
    names: {"options": {"out": ...}, "tiles": {"tile": ...}}."""
    out: dict[str, dict[str, object]] = {}
    for f in found:
        if f.dest in values:
            out.setdefault(f.path[0], {})[f.path[-1]] = values[f.dest]
    return out


def fixed_on_resume(found: list[Flag]) -> list[Flag]:
    """The flags a ``--resume`` may not change (their settings are the run's own)."""
    return [f for f in found if not f.setting.resume]


def changes(config, found: list[Flag], values: dict[str, object]):
    """``config`` (a dataclass whose fields are the sections of ``found``'s paths, e.g. a
    Preset) with the flag ``values`` (dest -> value; None: keep) set where their settings
    live."""
    for f in found:
        if values.get(f.dest) is not None:
            config = _set(config, f.path, f.setting, values[f.dest])
    return config


def _set(owner, path: tuple[str, ...], s: Setting, value):
    if len(path) > 1:
        inner = _set(getattr(owner, path[0]), path[1:], s, value)
        return dataclasses.replace(owner, **{path[0]: inner})
    new = s.to_field(value, owner) if s.to_field else {path[0]: value}
    return dataclasses.replace(owner, **new)


# ---------------------------------------------------------------------------------------
# Listings and forms


def listing(config, prefix: str = "") -> Iterator[tuple[str, str, object]]:
    """(section, label, value) of every declared field of the dataclass ``config``, nested
    sections as "train.augment"."""
    for f in fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from listing(value, f"{prefix}{f.name}.")
        elif about(f) is not None:
            yield prefix.rstrip("."), about(f).label or f.name, value


def form_options(cls, command: Command | None = None) -> dict[str, dict]:
    """The keyword arguments of ``magicgui.widgets.create_widget`` for a form of ``cls``'s
    declared fields (with ``command``: those its flags set, less those declared
    ``form=False``), name -> {"value", "annotation", "options": {"tooltip", "choices" or
    "min" / "max"}}, from the same declarations as the flags."""
    hints = typing.get_type_hints(cls)
    form = {}
    for f in fields(cls):
        s = about(f)
        if s is None or dataclasses.is_dataclass(hints[f.name]):
            continue
        if command is not None and (command not in s.commands or not s.form):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        options: dict = {"tooltip": s.help}
        rule = s.rule
        if rule and rule.values:
            options["choices"] = list(rule.values)
        elif rule and (rule.low is not None or rule.high is not None):
            options["min"] = rule.low if rule.low is not None else -1e9
            options["max"] = rule.high if rule.high is not None else 1e9
        kind = _base_type(hints[f.name])
        form[f.name] = {"value": default, "annotation": kind, "options": options}
        if rule and rule.values:
            form[f.name]["widget_type"] = "ComboBox"
    return form
