"""The manifest schema's per-model rules (schema.py's second part), generated from the
catalog for editors: what each model takes, as JSON Schema `if`/`then` on the model a job
states. `batchgen validate` checks the same facts on expanded jobs (catalog.check_request);
these rules see only what is written, and must never refuse what validate accepts.
"""

from __future__ import annotations

from typing import Any

from batchgen import catalog
from batchgen.templates import TEMPLATE_PATTERN, uses_variable_pattern

# Each value of a constrained field must be in the model's list (or duration range).
CONSTRAINED = ("duration", "ratio", "variant", "ref_mode", "resolution")
# An id becomes a file name (PRODUCT.md §9): no path separators or control characters.
SAFE_ID_PATTERN = r"^[^/\\\u0000-\u001f\u007f]*$"

# A job "is M" when it states model M itself, or its matrix lists M (each value of the
# matrix is combined with the job's own fields), or it states no model, has no rows file
# (a column could set one) and `defaults` says M. A value the rules check is one written
# on the job or in its matrix, or a default the job takes (it sets the field nowhere
# itself). A rows file may set any field, so a job with one is never said to lack one.


def _has(name: str) -> dict[str, Any]:
    return {"required": [name]}


def _is(name: str, value: Any) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"const": value}}}


def _matrix_has(name: str) -> dict[str, Any]:
    return {"required": ["matrix"], "properties": {"matrix": _has(name)}}


def _matrix_lists(name: str, value: Any) -> dict[str, Any]:
    lists = {"required": [name], "properties": {name: {"contains": {"const": value}}}}
    return {"required": ["matrix"], "properties": {"matrix": lists}}


def _sets(name: str) -> dict[str, Any]:
    """The job sets field `name` (or may: its rows file could)."""
    return _say({"anyOf": [_has(name), _has("rows"), _matrix_has(name)]}, f"{name} is required")


def _lacks(name: str) -> dict[str, Any]:
    return {"not": _sets(name)}


def _default(condition: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `defaults` exist and meet `condition`."""
    return {"required": ["defaults"], "properties": {"defaults": condition}}


def _every_job(rule: dict[str, Any]) -> dict[str, Any]:
    return {"properties": {"jobs": {"items": rule}}}


def _say(rule: dict[str, Any], message: str) -> dict[str, Any]:
    """`rule`, with the message an editor shows when a value breaks it (`errorMessage` is
    yaml-language-server's keyword; other validators ignore it)."""
    return {**rule, "errorMessage": message}


def _when(condition: dict[str, Any], then: Any, description: str) -> dict[str, Any]:
    return {"description": description, "if": condition, "then": then}


def _allowed(spec: dict[str, Any], name: str) -> dict[str, Any] | None:
    """What a value of constrained field `name` must be for a model of `spec`."""
    if name == "duration":
        rule = spec.get("durations", {})
        if "values" in rule:
            return {"enum": rule["values"]}
        return {"minimum": rule["min"], "maximum": rule["max"]} if rule else None
    listed = {"ratio": "ratios", "variant": "variants", "ref_mode": "ref_modes",
              "resolution": "resolutions"}[name]  # fmt: skip
    values = spec.get(listed)
    return {"enum": list(values)} if values else None


def _words(allowed: dict[str, Any]) -> str:
    if "enum" in allowed:
        return "one of " + ", ".join(map(str, allowed["enum"]))
    return f"{allowed['minimum']}-{allowed['maximum']}"


def _media_limits(types: list[str], max_items: int | None, per_type: dict[str, int]) -> Any:
    """What a media list must be: item types, at most `max_items`, at most N of a type."""
    kinds = _say({"enum": types}, "media type must be one of " + ", ".join(types) + " here")
    rule: dict[str, Any] = {"items": {"properties": {"type": kinds}}}
    if max_items is not None:
        rule = _say({**rule, "maxItems": max_items}, f"at most {max_items} media items here")
    limits = [
        _say(
            {"contains": _is("type", kind), "minContains": 0, "maxContains": limit},
            f"at most {limit} {kind} item(s) here",
        )
        for kind, limit in per_type.items()
    ]
    if limits:
        rule["allOf"] = limits
    return rule


def _on_job_and_matrix(name: str, rule: Any) -> dict[str, Any]:
    """`rule` for field `name` on the job and for each value of its matrix."""
    return {
        name: rule,
        "matrix": {"properties": {name: {"items": rule}}},
    }


def _model_rules(
    model: str, spec: dict[str, Any], scalar_fields: tuple[str, ...]
) -> dict[str, Any]:
    """What a job of `model` must be, on its own fields and matrix (see above)."""
    taken = set(spec["fields"])
    properties: dict[str, Any] = {}
    matrix: dict[str, Any] = {}
    for name in catalog.REQUEST_FIELDS:
        if name not in taken:
            # An empty media list sends nothing: only a non-empty one is refused.
            refused = _say({"maxItems": 0} if name == "media" else {"not": {}},
                           f"{name} is not accepted by {model}")  # fmt: skip
            properties[name] = refused
            matrix[name] = {"items": refused}
        elif name in CONSTRAINED and (allowed := _allowed(spec, name)) is not None:
            allowed = _say(allowed, f"{name} must be {_words(allowed)} for {model}")
            properties[name] = allowed
            matrix[name] = {"items": allowed}
    # A scalar field the model does not take never has a value: {variant} for grok.
    unknowable = [name for name in scalar_fields if name != "model" and name not in taken]
    if unknowable:
        names = ", ".join("{" + name + "}" for name in unknowable)
        never = _say({"not": {"pattern": uses_variable_pattern(unknowable)}},
                     f"{names} has no value for {model}")  # fmt: skip
        for name in ("id", "prompt"):
            properties[name] = never
            matrix[name] = {"items": never}
    properties["matrix"] = {"properties": matrix}
    rules: dict[str, Any] = {
        "description": f"What {model} takes (from the catalog).",
        "properties": properties,
    }
    media_rules = []
    if "media" in taken:
        for ref_mode, rule in spec.get("ref_modes", {}).items():
            limits = _media_limits(rule["types"], rule["max_items"], rule["max_per_type"])
            media_rules.append(
                _when(
                    {"anyOf": [_is("ref_mode", ref_mode), _matrix_lists("ref_mode", ref_mode)]},
                    {"properties": _on_job_and_matrix("media", limits)},
                    f"media with ref_mode {ref_mode}",
                )
            )
        if "ref_modes" not in spec:
            types = spec.get("media_types", [])
            properties["media"] = _media_limits(types, None, {})
            properties["matrix"]["properties"]["media"] = {"items": properties["media"]}
            for variant, rule in spec.get("variants", {}).items():
                limits = _media_limits(types, rule["max_images"], {})
                media_rules.append(
                    _when(
                        {"anyOf": [_is("variant", variant), _matrix_lists("variant", variant)]},
                        {"properties": _on_job_and_matrix("media", limits)},
                        f"media with variant {variant}",
                    )
                )
    if media_rules:
        rules["allOf"] = media_rules
    return rules


def _job_rules(job_fields: tuple[str, ...]) -> dict[str, Any]:
    """What every job must be, whatever its model: well-formed templates, a usable id, a
    non-empty prompt, and each field set in one place."""
    template = _say({"pattern": TEMPLATE_PATTERN},
                    "a stray brace: write {name} for a variable, {{ and }} for braces")  # fmt: skip
    prompt = {"allOf": [template, _say({"pattern": "\\S"}, "the prompt is empty")]}
    media = {"items": {"properties": {"url": template}}}
    identifier = {
        "allOf": [
            template,
            _say({"pattern": SAFE_ID_PATTERN}, "an id has no '/', '\\' or control characters"),
            _say({"not": {"enum": [".", ".."]}}, "an id cannot be '.' or '..'"),
        ]
    }
    properties = {
        "id": identifier,
        "prompt": prompt,
        "media": media,
        "matrix": {
            "properties": {
                "take": False,  # {take} is the take number
                "id": {"items": identifier},
                "prompt": {"items": prompt},
                "media": {"items": media},
            }
        },
    }
    once = [
        _when(
            _has(name),
            {"properties": {"matrix": {"not": _has(name)}}},
            f"{name} is set on the job or by its matrix, not both",
        )  # fmt: skip
        for name in job_fields
    ]
    return {"properties": properties, "allOf": once}


def add_rules(
    schema: dict[str, Any],
    data: dict[str, Any],
    job_fields: tuple[str, ...],
    scalar_fields: tuple[str, ...],
) -> None:
    """Add the per-model rules for catalog `data` to a structure schema (in place):
    `job_fields` are a job's fields, `scalar_fields` those a template may name."""
    models: dict[str, Any] = data["models"]
    defs = schema["$defs"]
    defs["job_rules"] = _job_rules(job_fields)
    for model, spec in models.items():
        defs[f"rules-{model}"] = _model_rules(model, spec, scalar_fields)
    states = {
        model: {"anyOf": [_is("model", model), _matrix_lists("model", model)]} for model in models
    }
    inherits_model = _lacks("model")
    job_checks: list[Any] = [{"$ref": "#/$defs/job_rules"}]
    root_checks: list[Any] = []
    for model, spec in models.items():
        model_rules = {"$ref": f"#/$defs/rules-{model}"}
        job_checks.append(_when(states[model], model_rules, f"a job of {model}"))
        default_model = _default(_is("model", model))
        root_checks.append(
            _when(
                default_model,
                _every_job(_when(inherits_model, model_rules, f"a job of {model} by default")),
                f"defaults.model is {model}",
            )
        )
        # A field the model requires, and ref_mode with media: set somewhere.
        required: list[tuple[str, dict[str, Any]]] = [
            (name, {}) for name in spec.get("required", [])
        ]
        if spec.get("ref_modes"):
            required.append(("ref_mode", {"required": ["media"],
                                          "properties": {"media": {"minItems": 1}}}))  # fmt: skip
        for name, trigger in required:
            no_default = {"not": _default(_has(name))}
            what = f"{model} needs {name}" + (" with media" if trigger else "")
            root_checks.append(
                _when(
                    no_default,
                    _every_job(_when({"allOf": [states[model], trigger]}, _sets(name), what)),
                    what,
                )
            )
            root_checks.append(
                _when(
                    {"allOf": [default_model, no_default]},
                    _every_job(_when({"allOf": [inherits_model, trigger]}, _sets(name), what)),
                    what + " (defaults.model)",
                )
            )
        # A default value the model takes must be one it allows, where a job takes it.
        for name in CONSTRAINED:
            allowed = _allowed(spec, name) if name in spec["fields"] else None
            if allowed is None:
                continue
            bad_default = _default({"required": [name], "properties": {name: {"not": allowed}}})
            what = f"defaults.{name} is not allowed for {model}"
            root_checks.append(
                _when(
                    bad_default,
                    _every_job(_when({"allOf": [states[model], _lacks(name)]}, False, what)),
                    what,
                )
            )
            root_checks.append(
                _when(
                    {"allOf": [default_model, bad_default]},
                    _every_job(_when({"allOf": [inherits_model, _lacks(name)]}, False, what)),
                    what + " (defaults.model)",
                )
            )
    # Every job needs a model and a prompt, from somewhere.
    for name in ("model", "prompt"):
        root_checks.append(
            _when(
                {"not": _default(_has(name))},
                _every_job(_sets(name)),
                f"every job needs {name}",
            )
        )
    defs["job"]["allOf"] = job_checks
    schema["allOf"] = root_checks
