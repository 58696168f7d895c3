"""Model cards: `huggingface_hub.ModelCard` with YAML front matter and a body a user can act on.

The front matter carries ``library_name: tokzoo``, the license, tags (modality, quantizer type, family), base model
and datasets. The body gives usage, token shape, codebook size, bitrate, measured quality (from a measurement
on held-out data, passed in as `metrics`), the original repository and the citation.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .registry import ModelSpec

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ description }}

## Usage

```python
import zoo

{{ variable }} = zoo.load("{{ load_name }}")
{{ usage }}
```
{% if shell %}
From a shell: `zoo encode {{ load_name }} INPUT -o tokens.safetensors`, then
`zoo decode {{ load_name }} tokens.safetensors -o OUTPUT`.
{% endif %}
## {{ facts_title }}

| fact | value |
|---|---|
{% for key, value in facts %}| {{ key }} | {{ value }} |
{% endfor %}
{% if metrics %}
## Measured quality

{{ metrics.description }}

| {{ metrics.columns | join(" | ") }} |
|{% for c in metrics.columns %}---|{% endfor %}
{% for row in metrics.rows %}| {{ row | join(" | ") }} |
{% endfor %}
{% endif %}
{% if origin_url or paper %}
## Origin

{% if origin_url %}- Original repository: {{ origin_url }}
{% endif %}{% if paper %}- Paper: {{ paper }}
{% endif %}{% endif %}
{% if splits %}
## Data

| split | data |
|---|---|
{% for key, value in splits %}| {{ key }} | {{ value }} |
{% endfor %}
{% endif %}
{% if limitations %}
## Limitations

{{ limitations }}
{% endif %}
{% if notes %}
## Notes

{{ notes }}
{% endif %}
{% if citation %}
## Citation

```bibtex
{{ citation }}
```
{% endif %}
"""


def metrics_text(metrics: dict[str, Any]) -> str:
    """A measured-quality table (``description``, ``columns``, ``rows``) as the description and markdown rows."""
    lines = [metrics["description"], "| " + " | ".join(metrics["columns"]) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in metrics["rows"]]
    return "\n".join(lines)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(spec: ModelSpec | None, *, facts: dict[str, Any], title: str, load_name: str, usage: str,
           metrics: dict[str, Any] | None = None, architecture: str = "", license: str = "unknown",
           description: str = "", tokenizer: bool = True) -> ModelCard:
    """Build the card.

    Args:
        spec: the registry entry, if the model is registered (license, paper, origin, tags, datasets).
        facts: rows of the facts table (token shape, codebook size, bitrate, ...).
        tokenizer: a tokenizer's card (``tok``, the `zoo encode` / `zoo decode` commands, a "Tokens" table);
            False for other models (``model``, no shell commands, a "Facts" table).
        metrics: ``{"description": str, "columns": [...], "rows": [[...], ...]}`` from a held-out measurement.
    """
    tags = ["tokzoo"]
    if spec is not None:
        tags += [f"{spec.modality}-{spec.kind}", spec.family, *spec.tags]
        license = spec.license
    elif architecture:
        tags.append(architecture)
    base_model = None
    if spec is not None and spec.hub_file is not None:
        base_model = spec.hub_file.repo_id
    card_data = ModelCardData(
        library_name="tokzoo",
        license=license,
        tags=sorted(set(tags)),
        base_model=base_model,
        datasets=list(spec.datasets) if spec is not None and spec.datasets else None,
    )
    metrics_view = None
    if metrics:
        metrics_view = dict(metrics, rows=[[_format(v) for v in row] for row in metrics["rows"]])
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        title=title,
        description=description or (spec.description if spec is not None else ""),
        load_name=load_name,
        usage=usage,
        variable="tok" if tokenizer else "model",
        shell=tokenizer,
        facts_title="Tokens" if tokenizer else "Facts",
        facts=[(k, _format(v)) for k, v in facts.items()],
        metrics=metrics_view,
        origin_url=spec.origin_url if spec is not None else None,
        paper=spec.paper if spec is not None else None,
        citation=spec.citation if spec is not None else "",
        notes=spec.notes if spec is not None else "",
        limitations=spec.limitations if spec is not None else "",
        splits=list(spec.splits.items()) if spec is not None else [],
    )


def model_card(model, *, metrics: dict[str, Any] | None = None, load_name: str | None = None) -> ModelCard:
    """The card of a built model (used by `save_pretrained` / `push_to_hub` / `zoo export`)."""
    spec = model.card_info.get("spec")
    name = load_name or (spec.name if spec is not None else "local-dir:PATH")
    return render(
        spec,
        facts=model.card_facts(),
        title=spec.name if spec is not None else f"{model.architecture} (tokzoo)",
        load_name=name,
        usage=model.card_usage(),
        metrics=metrics if metrics is not None else model.card_info.get("metrics"),
        architecture=model.architecture,
        tokenizer=model.kind == "tokenizer",
    )
