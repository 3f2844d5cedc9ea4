"""Which class a model is built as: the library's, or a subclass a config names
(``model.model_class``), so that a custom ``compute_loss`` trains, resumes, restores and exports
through the same pipeline as the built-in model."""

from __future__ import annotations

from tfmmrec.errors import ConfigError
from tfmmrec.models.ranking import MultitaskModel
from tfmmrec.models.retrieval import RetrievalModel
from tfmmrec.references import import_or_refuse


def model_class(reference: str, ranking: bool) -> type[RetrievalModel]:
    """The class ``model.model_class`` names (``""``: ``RetrievalModel``, or ``MultitaskModel``
    for a ranking head), checked to be a subclass of that base: it is called with the base's
    constructor arguments."""
    base = MultitaskModel if ranking else RetrievalModel
    if not reference:
        return base
    cls = import_or_refuse(
        reference, f"model.model_class={reference!r}", "this process",
        "define the class at the top level of a module on the PYTHONPATH (a class defined in "
        "a notebook or inside a function is found only by the process that defined it)")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        what = f"class {cls.__name__}" if isinstance(cls, type) else type(cls).__name__
        raise ConfigError(
            f"model.model_class={reference!r} is a {what}, not a subclass of "
            f"{base.__module__}.{base.__qualname__}"
            + (" (ranking.enabled: true builds a MultitaskModel)" if ranking else ""))
    if not ranking and issubclass(cls, MultitaskModel):
        raise ConfigError(f"model.model_class={reference!r} is a MultitaskModel: it needs a "
                          "ranking head, so set ranking.enabled: true")
    return cls
