"""Structural schemas and CEL rules of CustomResourceDefinitions, as kube-apiserver applies them.

The API emulator (`k8s_emulator.py`) uses this to admit custom objects the way the real
apiextensions-apiserver does, so a test that sends a bad `VariantAutoscaler` sees the same 422
`Invalid` answer, with the same field paths, that a cluster would give:

- defaulting (`default` of absent properties, recursively) before validation, as the server
  defaults on decoding;
- pruning of fields the schema does not declare (unless `x-kubernetes-preserve-unknown-fields`),
  reported back so the caller can implement `fieldValidation=Strict`;
- OpenAPI v3 validation of the subset structural schemas use: `type` (with `nullable` and
  `x-kubernetes-int-or-string`), `required`, `enum`, `minimum`/`maximum` (and their exclusive
  flags), `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`, `properties`,
  `additionalProperties`, `items`;
- `x-kubernetes-validations` rules in a small CEL evaluator.

The CEL here is a subset, on purpose: literals, `self`, field selection and indexing,
`has()`, `size()`, arithmetic, comparisons, `in`, `&&`/`||`/`!`, `?:`, list literals, the
`all`/`exists`/`exists_one` macros and the string methods `startsWith`, `endsWith`,
`contains`, `matches`. Anything else (`oldSelf` transition rules, other functions, maps,
`messageExpression`) is refused when the CRD is registered (`CelError`), never silently
accepted - a rule the emulator cannot check must not look like a rule that passed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

# --------------------------------------------------------------------------- CEL


class CelError(ValueError):
    """A rule outside the supported CEL subset, or not valid CEL at all (compile time)."""


class CelEvalError(ValueError):
    """A rule failed while evaluating (e.g. `no such key`), as cel-go reports at run time."""


_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+u?)"
    r"|(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:.,()\[\]{}]))"
)

_GLOBAL_FUNCS = {"size", "has", "int", "double", "string"}
_METHODS = {"size", "startsWith", "endsWith", "contains", "matches"}
_MACROS = {"all", "exists", "exists_one"}
_KEYWORDS = {"true", "false", "null", "in"}
_BINARY = {
    "||": 1, "&&": 2,
    "==": 3, "!=": 3, "<": 3, "<=": 3, ">": 3, ">=": 3, "in": 3,
    "+": 4, "-": 4,
    "*": 5, "/": 5, "%": 5,
}

Node = tuple[Any, ...]


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise CelError(f"Syntax error: unexpected character {text[pos:].strip()[:1]!r} "
                           f"at offset {pos}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    """Precedence-climbing parser producing tuples: ('lit', v), ('id', n), ('sel', x, f),
    ('index', x, i), ('call', f, args), ('method', x, f, args), ('macro', x, f, var, body),
    ('has', x, f), ('unary', op, x), ('bin', op, a, b), ('cond', c, a, b), ('list', items)."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.variables: set[str] = {"self"}

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("eof", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise CelError(f"Syntax error: expected {value!r}, found {tok[1] or 'end of input'!r}")
        if tok[0] == "eof":
            raise CelError("Syntax error: unexpected end of input")
        self.pos += 1
        return tok

    def parse(self) -> Node:
        node = self.expr()
        if self.peek()[0] != "eof":
            raise CelError(f"Syntax error: unexpected {self.peek()[1]!r}")
        return node

    def expr(self) -> Node:
        cond = self.binary(1)
        if self.peek()[1] == "?":
            self.take("?")
            yes = self.expr()
            self.take(":")
            return ("cond", cond, yes, self.expr())
        return cond

    def binary(self, min_prec: int) -> Node:
        left = self.unary()
        while True:
            op = self.peek()[1]
            prec = _BINARY.get(op) if self.peek()[0] in ("op", "id") else None
            if prec is None or prec < min_prec:
                return left
            self.take()
            left = ("bin", op, left, self.binary(prec + 1))

    def unary(self) -> Node:
        if self.peek()[1] in ("!", "-"):
            op = self.take()[1]
            return ("unary", op, self.unary())
        return self.member(self.primary())

    def args(self) -> list[Node]:
        self.take("(")
        out: list[Node] = []
        while self.peek()[1] != ")":
            out.append(self.expr())
            if self.peek()[1] != ")":
                self.take(",")
        self.take(")")
        return out

    def member(self, node: Node) -> Node:
        while self.peek()[1] in (".", "["):
            if self.take()[1] == "[":
                node = ("index", node, self.expr())
                self.take("]")
                continue
            kind, name = self.take()
            if kind != "id":
                raise CelError(f"Syntax error: expected a field name after '.', found {name!r}")
            if self.peek()[1] != "(":
                node = ("sel", node, name)
            elif name in _MACROS:
                node = self.macro(node, name)
            elif name in _METHODS:
                node = ("method", node, name, self.args())
            else:
                raise CelError(f"undeclared reference to '{name}' (the emulator's CEL subset "
                               f"supports the methods {sorted(_METHODS | _MACROS)})")
        return node

    def macro(self, target: Node, name: str) -> Node:
        self.take("(")
        kind, var = self.take()
        if kind != "id":
            raise CelError(f"Syntax error: {name}() needs a variable name first")
        self.take(",")
        self.variables.add(var)
        body = self.expr()
        self.take(")")
        return ("macro", target, name, var, body)

    def primary(self) -> Node:
        kind, value = self.take()
        if kind in ("num", "str"):
            return ("lit", _literal(value))
        if kind == "op" and value == "(":
            node = self.expr()
            self.take(")")
            return node
        if kind == "op" and value == "[":
            items: list[Node] = []
            while self.peek()[1] != "]":
                items.append(self.expr())
                if self.peek()[1] != "]":
                    self.take(",")
            self.take("]")
            return ("list", items)
        if kind != "id":
            raise CelError(f"Syntax error: unexpected {value!r}")
        if value in ("true", "false"):
            return ("lit", value == "true")
        if value == "null":
            return ("lit", None)
        if self.peek()[1] == "(":
            return self.call(value)
        if value == "oldSelf":
            raise CelError("transition rules (oldSelf) are not supported by the forescale API "
                           "emulator's CEL subset")
        if value not in self.variables:
            raise CelError(f"undeclared reference to '{value}'")
        return ("id", value)

    def call(self, name: str) -> Node:
        if name not in _GLOBAL_FUNCS:
            raise CelError(f"undeclared reference to '{name}' (the emulator's CEL subset "
                           f"supports {sorted(_GLOBAL_FUNCS)})")
        args = self.args()
        if name == "has":
            if len(args) != 1 or args[0][0] != "sel":
                raise CelError("invalid argument to has() macro: it takes one field selection")
            return ("has", args[0][1], args[0][2])
        if len(args) != 1:
            raise CelError(f"{name}() takes one argument, got {len(args)}")
        return ("call", name, args)


def _literal(token: str) -> Any:
    """The value of a number or string token."""
    if token[0] in "\"'":
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    if any(c in token for c in ".eE"):
        return float(token)
    return int(token.rstrip("u"))


def _type_name(value: Any) -> str:
    if value is None:
        return "null_type"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "double", str: "string", list: "list", dict: "map"}.get(
        type(value), type(value).__name__)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _no_overload(op: str, *values: Any) -> CelEvalError:
    types = ", ".join(_type_name(v) for v in values)
    return CelEvalError(f"no such overload: {op}({types})")


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return bool(a == b) if (_numeric(a) and _numeric(b)) or type(a) is type(b) else False
    if op == "!=":
        return not _compare("==", a, b)
    if not ((_numeric(a) and _numeric(b)) or (type(a) is type(b) and isinstance(a, str))):
        raise _no_overload(op, a, b)
    return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


def _arith(op: str, a: Any, b: Any) -> Any:
    if op == "+" and type(a) is type(b) and isinstance(a, (str, list)):
        return a + b
    if not (_numeric(a) and _numeric(b) and type(a) is type(b)):
        raise _no_overload(op, a, b)
    if op in ("/", "%") and b == 0:
        raise CelEvalError("division by zero" if op == "/" else "modulus by zero")
    if op == "/":
        return a // b if isinstance(a, int) else a / b
    if op == "%":
        return a % b
    return {"+": a + b, "-": a - b, "*": a * b}[op]


class CelProgram:
    """A compiled rule: `evaluate({'self': value})` returns the rule's value."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self.ast = _Parser(rule).parse()

    def evaluate(self, bindings: dict[str, Any]) -> Any:
        return self._eval(self.ast, bindings)

    def _eval(self, node: Node, env: dict[str, Any]) -> Any:  # noqa: C901 - one case per node
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "id":
            return env[node[1]]
        if kind == "list":
            return [self._eval(n, env) for n in node[1]]
        if kind in ("sel", "has"):
            target = self._eval(node[1], env)
            if not isinstance(target, dict):
                raise CelEvalError(f"no such key: {node[2]} (on a {_type_name(target)})")
            if kind == "has":
                return node[2] in target
            if node[2] not in target:
                raise CelEvalError(f"no such key: {node[2]}")
            return target[node[2]]
        if kind == "index":
            return self._index(self._eval(node[1], env), self._eval(node[2], env))
        if kind == "unary":
            value = self._eval(node[2], env)
            if node[1] == "!":
                if not isinstance(value, bool):
                    raise _no_overload("!_", value)
                return not value
            if not _numeric(value):
                raise _no_overload("-_", value)
            return -value
        if kind == "bin":
            return self._binary(node, env)
        if kind == "cond":
            cond = self._eval(node[1], env)
            if not isinstance(cond, bool):
                raise _no_overload("_?_:_", cond)
            return self._eval(node[2] if cond else node[3], env)
        if kind == "call":
            return self._call(node[1], self._eval(node[2][0], env))
        if kind == "method":
            return self._method(self._eval(node[1], env), node[2],
                                [self._eval(a, env) for a in node[3]])
        return self._macro(node, env)

    @staticmethod
    def _index(target: Any, key: Any) -> Any:
        if isinstance(target, list) and isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(target):
                raise CelEvalError(f"index out of bounds: {key}")
            return target[key]
        if isinstance(target, dict) and isinstance(key, str):
            if key not in target:
                raise CelEvalError(f"no such key: {key}")
            return target[key]
        raise _no_overload("_[_]", target, key)

    def _binary(self, node: Node, env: dict[str, Any]) -> Any:
        op = node[1]
        if op in ("&&", "||"):
            left = self._eval(node[2], env)
            if not isinstance(left, bool):
                raise _no_overload(op, left)
            if (op == "&&" and not left) or (op == "||" and left):
                return left
            right = self._eval(node[3], env)
            if not isinstance(right, bool):
                raise _no_overload(op, right)
            return right
        a, b = self._eval(node[2], env), self._eval(node[3], env)
        if op == "in":
            if isinstance(b, list):
                return any(_compare("==", a, item) for item in b)
            if isinstance(b, dict):
                return a in b
            raise _no_overload("@in", a, b)
        if op in ("==", "!=", "<", "<=", ">", ">="):
            return _compare(op, a, b)
        return _arith(op, a, b)

    @staticmethod
    def _call(name: str, value: Any) -> Any:
        if name == "size":
            if isinstance(value, (str, list, dict)):
                return len(value)
            raise _no_overload("size", value)
        if name == "int":
            if _numeric(value) or isinstance(value, str):
                try:
                    return int(value)
                except ValueError as exc:
                    raise CelEvalError(f"cannot convert {value!r} to int") from exc
            raise _no_overload("int", value)
        if name == "double":
            if _numeric(value) or isinstance(value, str):
                return float(value)
            raise _no_overload("double", value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    @staticmethod
    def _method(target: Any, name: str, args: list[Any]) -> Any:
        if name == "size" and not args:
            return CelProgram._call("size", target)
        if not isinstance(target, str) or len(args) != 1 or not isinstance(args[0], str):
            raise _no_overload(name, target, *args)
        if name == "startsWith":
            return target.startswith(args[0])
        if name == "endsWith":
            return target.endswith(args[0])
        if name == "contains":
            return args[0] in target
        return re.search(args[0], target) is not None

    def _macro(self, node: Node, env: dict[str, Any]) -> Any:
        _, target_node, name, var, body = node
        target = self._eval(target_node, env)
        if isinstance(target, dict):
            items: list[Any] = list(target)
        elif isinstance(target, list):
            items = target
        else:
            raise _no_overload(name, target)
        results = []
        for item in items:
            value = self._eval(body, {**env, var: item})
            if not isinstance(value, bool):
                raise _no_overload(name, value)
            results.append(value)
        if name == "all":
            return all(results)
        if name == "exists":
            return any(results)
        return results.count(True) == 1


def compile_cel(rule: str) -> CelProgram:
    """Compile a rule of the supported subset, or raise `CelError` saying what is unsupported."""
    if not isinstance(rule, str) or not rule.strip():
        raise CelError("rule must be a non-empty string")
    return CelProgram(rule)


# --------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class FieldError:
    """One problem, as a `StatusCause`: field path, reason and message (`Invalid value: ...`)."""

    field: str
    reason: str
    message: str

    def render(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class SchemaError(ValueError):
    """A CRD's schema that the emulator refuses (unsupported rule, not structural)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(e.render() for e in errors))
        self.errors = errors


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": _numeric,
    "boolean": lambda v: isinstance(v, bool),
}

_KNOWN_KEYS = {
    "type", "description", "properties", "required", "items", "additionalProperties",
    "enum", "default", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "minProperties",
    "maxProperties", "nullable", "format", "title", "example", "uniqueItems",
    "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-embedded-resource",
}


def _show(value: Any) -> str:
    """A value as Go's `%#v`-ish rendering in field errors: strings quoted, rest as JSON."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return f'"{"object" if isinstance(value, dict) else "array"}"'
    return repr(value)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass(frozen=True)
class _Rule:
    program: CelProgram
    message: str
    field_path: str
    reason: str


class StructuralSchema:
    """One version's `openAPIV3Schema`, compiled: defaults, pruning, validation and CEL.

    `where` is the CRD field path of the schema (for errors at registration), e.g.
    `spec.versions[0].schema.openAPIV3Schema`.
    """

    def __init__(self, schema: JSON, where: str) -> None:
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise SchemaError([FieldError(f"{where}.type", "FieldValueRequired",
                                          'Required value: must be "object" at the root')])
        self.schema = schema
        self.rules: dict[int, list[_Rule]] = {}
        errors: list[FieldError] = []
        self._compile(schema, where, errors)
        if errors:
            raise SchemaError(errors)

    # ----------------------------------------------------------------- compile

    def _compile(self, node: JSON, where: str, errors: list[FieldError]) -> None:
        unknown = sorted(set(node) - _KNOWN_KEYS)
        if unknown:
            errors.append(FieldError(f"{where}.{unknown[0]}", "FieldValueForbidden",
                                     "Forbidden: not supported by the forescale API emulator "
                                     "(or not allowed in structural schemas)"))
        if "type" not in node and not (node.get("x-kubernetes-int-or-string")
                                       or node.get("x-kubernetes-preserve-unknown-fields")):
            errors.append(FieldError(f"{where}.type", "FieldValueRequired",
                                     "Required value: must not be empty for specified object "
                                     "fields"))
        rules: list[_Rule] = []
        for i, raw in enumerate(node.get("x-kubernetes-validations") or []):
            at = f"{where}.x-kubernetes-validations[{i}]"
            if "messageExpression" in raw or "optionalOldSelf" in raw:
                errors.append(FieldError(at, "FieldValueForbidden", "Forbidden: "
                                         "messageExpression/optionalOldSelf are not supported "
                                         "by the forescale API emulator"))
                continue
            try:
                program = compile_cel(raw.get("rule", ""))
            except CelError as exc:
                errors.append(FieldError(f"{at}.rule", "FieldValueInvalid",
                                         f"Invalid value: {_show(raw.get('rule'))}: compilation "
                                         f"failed: {exc}"))
                continue
            rules.append(_Rule(program, str(raw.get("message") or ""),
                               str(raw.get("fieldPath") or ""),
                               str(raw.get("reason") or "FieldValueInvalid")))
        if rules:
            self.rules[id(node)] = rules
        for key, sub in (node.get("properties") or {}).items():
            self._compile(sub, f"{where}.properties[{key}]", errors)
        if isinstance(node.get("items"), dict):
            self._compile(node["items"], f"{where}.items", errors)
        if isinstance(node.get("additionalProperties"), dict):
            self._compile(node["additionalProperties"], f"{where}.additionalProperties", errors)

    # ----------------------------------------------------------------- default & prune

    def default(self, obj: JSON) -> JSON:
        """A copy of `obj` with schema defaults applied wherever a property is absent."""
        out = copy.deepcopy(obj)
        _apply_defaults(self.schema, out)
        return out

    def prune(self, obj: JSON) -> tuple[JSON, list[str]]:
        """A copy of `obj` without undeclared fields, and the paths of those removed.

        `apiVersion`, `kind` and `metadata` are the server's, never pruned here.
        """
        out = copy.deepcopy(obj)
        removed: list[str] = []
        _prune(self.schema, out, "", removed, root=True)
        return out, removed

    # ----------------------------------------------------------------- validate

    def validate(self, obj: JSON, only: str | None = None) -> list[FieldError]:
        """Problems of `obj` against the schema and its rules; `only` limits to one top-level
        property (the status subresource validates `status` alone)."""
        errors: list[FieldError] = []
        if only is not None:
            sub = (self.schema.get("properties") or {}).get(only)
            if sub is not None and only in obj:
                self._validate(sub, obj[only], only, errors)
            return errors
        props = self.schema.get("properties") or {}
        for key in self.schema.get("required") or []:
            if key not in obj:
                errors.append(FieldError(key, "FieldValueRequired", "Required value"))
        for key, value in obj.items():
            if key in props and key not in ("apiVersion", "kind", "metadata"):
                self._validate(props[key], value, key, errors)
        if not errors:
            self._run_rules(self.schema, obj, "", errors)
        return errors

    def _validate(self, node: JSON, value: Any, path: str, errors: list[FieldError]) -> None:
        before = len(errors)
        if value is None and node.get("nullable"):
            return
        if not self._check_type(node, value, path, errors):
            return
        errors.extend(_scalar_errors(node, value, path))
        if isinstance(value, dict):
            self._validate_object(node, value, path, errors)
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                self._validate(node["items"], item, f"{path}[{i}]", errors)
        if len(errors) == before:
            self._run_rules(node, value, path, errors)

    @staticmethod
    def _check_type(node: JSON, value: Any, path: str, errors: list[FieldError]) -> bool:
        if node.get("x-kubernetes-int-or-string"):
            ok = isinstance(value, str) or _TYPES["integer"](value)
            wanted = "integer or string"
        else:
            wanted = str(node.get("type", ""))
            ok = not wanted or _TYPES[wanted](value)
        if not ok:
            actual = _json_type(value)
            errors.append(FieldError(path, "FieldValueTypeInvalid",
                                     f'Invalid value: "{actual}": {path} in body must be of '
                                     f'type {wanted}: "{actual}"'))
        return ok

    def _validate_object(self, node: JSON, value: JSON, path: str,
                         errors: list[FieldError]) -> None:
        props = node.get("properties") or {}
        for key in node.get("required") or []:
            if key not in value:
                errors.append(FieldError(_child(path, key), "FieldValueRequired",
                                         "Required value"))
        extra = node.get("additionalProperties")
        for key, sub in value.items():
            if key in props:
                self._validate(props[key], sub, _child(path, key), errors)
            elif isinstance(extra, dict):
                self._validate(extra, sub, f"{path}[{key}]", errors)

    def _run_rules(self, node: JSON, value: Any, path: str, errors: list[FieldError]) -> None:
        for r in self.rules.get(id(node), []):
            where = path + r.field_path if r.field_path else path
            where = where.lstrip(".")
            try:
                ok = r.program.evaluate({"self": value})
            except CelEvalError as exc:
                errors.append(FieldError(where, "FieldValueInvalid",
                                         f"Invalid value: {_show(value)}: {exc} evaluating rule: "
                                         f"{r.program.rule}"))
                continue
            if ok is not True:
                message = r.message or f"failed rule: {r.program.rule}"
                errors.append(FieldError(where, r.reason,
                                         f"Invalid value: {_show(value)}: {message}"))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)


def _bound_errors(node: JSON, value: Any, path: str) -> Iterator[FieldError]:
    if not _numeric(value):
        return
    lo, hi = node.get("minimum"), node.get("maximum")
    if lo is not None:
        excl = bool(node.get("exclusiveMinimum"))
        if value < lo or (excl and value == lo):
            words = "greater than" if excl else "greater than or equal to"
            yield FieldError(path, "FieldValueInvalid", f"Invalid value: {_show(value)}: "
                             f"{path} in body should be {words} {_show(lo)}")
    if hi is not None:
        excl = bool(node.get("exclusiveMaximum"))
        if value > hi or (excl and value == hi):
            words = "less than" if excl else "less than or equal to"
            yield FieldError(path, "FieldValueInvalid", f"Invalid value: {_show(value)}: "
                             f"{path} in body should be {words} {_show(hi)}")


def _length_errors(node: JSON, value: Any, path: str) -> Iterator[FieldError]:
    for key, unit in (("Length", "chars"), ("Items", "items"), ("Properties", "properties")):
        kind = {"Length": str, "Items": list, "Properties": dict}[key]
        if not isinstance(value, kind):
            continue
        lo, hi = node.get(f"min{key}"), node.get(f"max{key}")
        if lo is not None and len(value) < lo:
            yield FieldError(path, "FieldValueInvalid", f"Invalid value: {_show(value)}: "
                             f"{path} in body should have at least {lo} {unit}")
        if hi is not None and len(value) > hi:
            yield FieldError(path, "FieldValueTooLong", f"Too long: may not be more than "
                             f"{hi} {unit}")


def _scalar_errors(node: JSON, value: Any, path: str) -> list[FieldError]:
    errors = list(_bound_errors(node, value, path)) + list(_length_errors(node, value, path))
    if "enum" in node and value not in node["enum"]:
        allowed = ", ".join(_show(v) for v in node["enum"])
        errors.append(FieldError(path, "FieldValueNotSupported",
                                 f"Unsupported value: {_show(value)}: supported values: "
                                 f"{allowed}"))
    pattern = node.get("pattern")
    if pattern and isinstance(value, str) and re.search(pattern, value) is None:
        errors.append(FieldError(path, "FieldValueInvalid", f"Invalid value: {_show(value)}: "
                                 f"{path} in body should match '{pattern}'"))
    return errors


def _apply_defaults(node: JSON, value: Any) -> None:
    if isinstance(value, dict):
        for key, sub in (node.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _apply_defaults(sub, value[key])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(value) - set(node.get("properties") or {}):
                _apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _apply_defaults(node["items"], item)


def _prune(node: JSON, value: Any, path: str, removed: list[str], root: bool = False) -> None:
    if isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        keep_all = bool(node.get("x-kubernetes-preserve-unknown-fields")) or extra is True
        for key in list(value):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in props:
                _prune(props[key], value[key], _child(path, key), removed)
            elif isinstance(extra, dict):
                _prune(extra, value[key], f"{path}[{key}]", removed)
            elif not keep_all:
                removed.append(_child(path, key))
                del value[key]
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            _prune(node["items"], item, f"{path}[{i}]", removed)
