"""A strict reader for the small part of YAML that deploy/observability's rule files use.

The project has no YAML library (and adds no dependency for a test), so this reads block
mappings, block sequences, plain/quoted scalars, the empty flow collections `[]`/`{}`, and
`|`/`>` block scalars with `-` chomping. Anything else (anchors, tags, flow collections with
content, `+` chomping, documents) raises YamlSubsetError instead of being misread. Scalars stay
strings. promtool, when installed, reads the same files with a full YAML parser.
"""

from __future__ import annotations

import json
from typing import Any


class YamlSubsetError(ValueError):
    """The text uses YAML this reader does not support, or is not valid."""


def load(text: str) -> Any:
    parser = _Parser(text.splitlines())
    value = parser.node(0)
    parser.skip_blank()
    if parser.index < len(parser.lines):
        raise parser.error("unexpected content (bad indentation?)")
    return value


def _indent(line: str) -> int:
    if "\t" in line[: len(line) - len(line.lstrip())]:
        raise YamlSubsetError(f"tab in indentation: {line!r}")
    return len(line) - len(line.lstrip(" "))


def _is_sequence_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


def _split_key(text: str) -> tuple[str, str] | None:
    """`key: rest` -> (key, rest); None when the text is not a mapping entry."""
    if text.startswith(('"', "'")):
        quote = text[0]
        end = text.find(quote, 1)
        if end < 0 or not text[end + 1 :].startswith(":"):
            return None
        return _scalar(text[: end + 1]), text[end + 2 :].strip()
    for position, char in enumerate(text):
        if char == ":" and (position + 1 == len(text) or text[position + 1] == " "):
            return text[:position].strip(), text[position + 1 :].strip()
        if char == "#" and position > 0 and text[position - 1] == " ":
            return None
    return None


def _strip_comment(text: str) -> str:
    for position, char in enumerate(text):
        if char == "#" and (position == 0 or text[position - 1] == " "):
            return text[:position].rstrip()
    return text


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith('"'):
        end = 1
        while end < len(text) and text[end] != '"':
            end += 2 if text[end] == "\\" else 1
        if end >= len(text) or _strip_comment(text[end + 1 :]).strip():
            raise YamlSubsetError(f"bad double-quoted scalar: {text!r}")
        try:
            value: str = json.loads(text[: end + 1])
        except json.JSONDecodeError as bad:
            raise YamlSubsetError(f"unsupported escape in {text!r}") from bad
        return value
    if text.startswith("'"):
        end = 1
        while True:
            end = text.find("'", end)
            if end < 0:
                raise YamlSubsetError(f"unclosed single-quoted scalar: {text!r}")
            if text[end + 1 : end + 2] == "'":
                end += 2
                continue
            break
        if _strip_comment(text[end + 1 :]).strip():
            raise YamlSubsetError(f"bad single-quoted scalar: {text!r}")
        return text[1:end].replace("''", "'")
    plain = _strip_comment(text)
    if plain == "[]":
        return []
    if plain == "{}":
        return {}
    if plain[:1] in set("[]{}&*!|>%@`"):
        raise YamlSubsetError(f"unsupported YAML: {text!r}")
    return plain


class _Parser:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.index = 0

    def error(self, what: str) -> YamlSubsetError:
        line = self.lines[self.index] if self.index < len(self.lines) else "<end>"
        return YamlSubsetError(f"line {self.index + 1}: {what}: {line!r}")

    def skip_blank(self) -> None:
        while self.index < len(self.lines):
            stripped = self.lines[self.index].strip()
            if stripped and not stripped.startswith("#"):
                return
            if stripped.startswith("---") or stripped.startswith("..."):
                raise self.error("documents are not supported")
            self.index += 1

    def node(self, min_indent: int) -> Any:
        self.skip_blank()
        if self.index >= len(self.lines):
            return None
        line = self.lines[self.index]
        indent = _indent(line)
        if indent < min_indent:
            return None
        if _is_sequence_item(line.strip()):
            return self.sequence(indent)
        return self.mapping(indent)

    def mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while True:
            self.skip_blank()
            if self.index >= len(self.lines):
                return result
            line = self.lines[self.index]
            if _indent(line) < indent:
                return result
            if _indent(line) > indent:
                raise self.error("unexpected indentation")
            text = line.strip()
            if _is_sequence_item(text):
                return result
            entry = _split_key(text)
            if entry is None:
                raise self.error("expected `key: value`")
            key, rest = entry
            if key in result:
                raise self.error(f"duplicate key {key!r}")
            self.index += 1
            result[key] = self.value(rest, indent)

    def value(self, rest: str, indent: int) -> Any:
        """The value after `key:` or `- `, whose entry starts at column `indent`."""
        header = _strip_comment(rest)
        if header in ("|", "|-", ">", ">-"):
            return self.block_scalar(header, indent)
        if header.startswith(("|", ">")):
            raise self.error(f"unsupported block scalar header {header!r}")
        if rest:
            return _scalar(rest)
        self.skip_blank()
        if self.index >= len(self.lines):
            return None
        next_line = self.lines[self.index]
        if _indent(next_line) > indent:
            return self.node(indent + 1)
        if _indent(next_line) == indent and _is_sequence_item(next_line.strip()):
            return self.sequence(indent)
        return None

    def sequence(self, indent: int) -> list[Any]:
        result: list[Any] = []
        while True:
            self.skip_blank()
            if self.index >= len(self.lines):
                return result
            line = self.lines[self.index]
            text = line.strip()
            if _indent(line) != indent or not _is_sequence_item(text):
                if _indent(line) > indent:
                    raise self.error("unexpected indentation")
                return result
            content = text[1:].lstrip()
            column = indent + 1 + (len(text) - 1 - len(content))
            if content and _split_key(content) is not None:
                # `- key: value` opens a mapping whose keys sit at the content's column.
                self.lines[self.index] = " " * column + content
                result.append(self.mapping(column))
            else:
                self.index += 1
                result.append(self.value(content, indent))

    def block_scalar(self, header: str, indent: int) -> str:
        raw: list[str] = []
        block_indent: int | None = None
        while self.index < len(self.lines):
            line = self.lines[self.index]
            if line.strip():
                if _indent(line) <= indent:
                    break
                if block_indent is None:
                    block_indent = _indent(line)
                elif _indent(line) < block_indent:
                    raise self.error("block scalar line less indented than its first line")
            raw.append(line)
            self.index += 1
        while raw and not raw[-1].strip():
            raw.pop()
        if block_indent is None:
            return ""
        body = [line[block_indent:] if line.strip() else "" for line in raw]
        if header.startswith("|"):
            text = "\n".join(body)
        else:
            # Folding: lines of a paragraph join with a space; blank and more-indented lines
            # keep their line breaks.
            text = ""
            for position, line in enumerate(body):
                if position == 0:
                    text = line
                elif not line or line.startswith(" ") or not body[position - 1]:
                    text += "\n" + line
                else:
                    text += " " + line
        return text if header.endswith("-") else text + "\n"
