"""What a template reads of its context, found in its source rather than by running it.

An email's content is a function of what its template reads: two customers whose profiles differ
only in keys the template never reads get the same email but for their links. `Reads` says, for
each variable a template (with every template it extends, imports or includes) loads, which
constant keys it reads of it (`customer.first_name`, `customer["locale"]`), or that it reads the
whole value (passed to a macro or filter, iterated, `customer.get(...)`). A template named by an
expression rather than a string cannot be followed: its reads are unknown (None).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

from jinja2 import nodes
from jinja2.environment import Environment
from jinja2.exceptions import TemplateError as JinjaTemplateError

# every key read (None) rather than some
WHOLE = None


@dataclass(frozen=True)
class Reads:
    # variable -> the constant keys read of it, or WHOLE
    variables: dict[str, frozenset[str] | None]

    @cached_property
    def ordered(self) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
        """The variables in order, each with its keys in order (None: the whole value)."""
        return tuple((name, None if keys is WHOLE else tuple(sorted(keys)))
                     for name, keys in sorted(self.variables.items()))

    def __or__(self, other: Reads) -> Reads:
        merged = dict(self.variables)
        for name, keys in other.variables.items():
            if name in merged:
                mine = merged[name]
                merged[name] = WHOLE if mine is WHOLE or keys is WHOLE else mine | keys
            else:
                merged[name] = keys
        return Reads(merged)


NOTHING = Reads({})
# what rendering reads of the context beside the template: the formatting filters read the customer's
# time zone, the render the customer's locale
IMPLICIT = Reads({"customer": frozenset({"locale", "timezone"})})


def reads_of_tree(tree: nodes.Node) -> tuple[Reads, list[str] | None]:
    """The reads of one parsed template, and the names of the templates it uses (None: one is named
    by an expression)."""
    keyed: dict[int, str] = {}  # id of a Name node read by a constant key -> that key
    for read in tree.find_all(nodes.Getattr):
        assert isinstance(read, nodes.Getattr)
        # a method of dict (`get`, `items`) reaches any key: the whole value
        if _loaded(read.node) and not hasattr(dict, read.attr):
            keyed[id(read.node)] = read.attr
    for item in tree.find_all(nodes.Getitem):
        assert isinstance(item, nodes.Getitem)
        if _loaded(item.node) and isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str):
            keyed[id(item.node)] = item.arg.value
    variables: dict[str, frozenset[str] | None] = {}
    for name in tree.find_all(nodes.Name):
        if name.ctx != "load":
            continue
        key = keyed.get(id(name))
        found = variables.get(name.name, frozenset())
        if key is None or found is WHOLE:
            variables[name.name] = WHOLE
        else:
            variables[name.name] = found | {key}
    used: list[str] = []
    for use in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        assert isinstance(use, (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport))
        named = _constant_names(use.template)
        if named is None:
            return Reads(variables), None
        used += named
    return Reads(variables), used


def _loaded(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.ctx == "load"


def _constant_names(expression: nodes.Expr) -> list[str] | None:
    if isinstance(expression, nodes.Const) and isinstance(expression.value, str):
        return [expression.value]
    if isinstance(expression, (nodes.List, nodes.Tuple)):  # include ["a", "b"]: the first found
        names = [_constant_names(item) for item in expression.items]
        return None if any(found is None for found in names) else [n for found in names if found for n in found]
    return None


def reads_of_templates(env: Environment, names: Iterable[str],
                       source: Callable[[str], str | None]) -> Reads | None:
    """The reads of templates `names` and of every template they use, in `env`; `source(name)` is a
    template's text (None: not found, which reads nothing). None when one cannot be followed."""
    reads = NOTHING
    seen: set[str] = set()
    waiting = list(names)
    while waiting:
        name = waiting.pop()
        if name in seen:
            continue
        seen.add(name)
        text = source(name)
        if text is None:
            continue
        try:
            found, used = reads_of_tree(env.parse(text))
        except JinjaTemplateError:
            return None
        if used is None:
            return None
        reads |= found
        waiting += used
    return reads


def reads_of_source(env: Environment, text: str) -> Reads | None:
    """The reads of a template given as text (a subject line); None when it uses another template."""
    try:
        found, used = reads_of_tree(env.parse(text))
    except JinjaTemplateError:
        return None
    return found if used == [] else None
