"""YAML as people write it in scenarios, segments and campaigns: `true` and `false` are the only booleans
(`on`, `off`, `yes`, `no` stay text, as in YAML 1.2: `on: [mon, fri]` is a key named on), and
timestamps stay the text written (the code that reads them parses them, time zone rules included)."""

from __future__ import annotations

import re
from typing import Any

import yaml

_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_BOOLEANS = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class PlainLoader(yaml.SafeLoader):
    pass


PlainLoader.yaml_implicit_resolvers = {
    key: [(tag, _BOOLEANS if tag == _BOOL else regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_plain(text: str) -> Any:
    """One YAML document with PlainLoader; yaml.YAMLError when it is not YAML."""
    return yaml.load(text, Loader=PlainLoader)
