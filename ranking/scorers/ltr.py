"""The LightGBM LambdaRank ranker and its ablations as harness scorers.

They follow the scorer contract (fit on a cut, score a batch over the whole catalogue), so
they are evaluated exactly like the baselines: same split, same requests, same metrics.
Candidates get the model's score; every other item ranks below all candidates. The model
itself is trained once per run on the training requests (`ranking.ltr.training`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ranking.inputs import FitData, RequestBatch
from ranking.scorers.base import Scorer, register
from recdata.errors import ConfigError

if TYPE_CHECKING:
    from ranking.ltr.training import LTRResources

BELOW_CANDIDATES = -1e9


class LTRScorer(Scorer):
    ablation: ClassVar[str] = "full"
    uses_instruction = True
    uses_kg = True
    uses_feature_store = True

    def _resources(self) -> LTRResources:
        res = getattr(self.context, "ltr", None)
        if res is None:
            raise ConfigError(f"{self.name!r} needs the ranker's training resources (a built "
                              "feature repo); evaluate it through `instructrank evaluate`")
        return res

    def _fit_model(self, data: FitData) -> None:
        self.model = self._resources().train(self.ablation, self.name)

    def _score(self, batch: RequestBatch) -> np.ndarray:
        from ranking.constraints import constrain

        scores = np.full((len(batch), batch.n_items), BELOW_CANDIDATES)
        res = self._resources()
        parsed, tables = res.parsed(self.fitted, batch)
        row = 0
        for ex in res.iter_examples(self.fitted, batch):
            n = len(ex.labels)
            predicted = self.model.predict(ex.frame).reshape(ex.cands.idx.shape)
            # what the request rules out ranks after what it allows (ranking.constraints)
            predicted = constrain(predicted, parsed.rows(row, row + n), tables, ex.cands.idx)
            predicted[~ex.cands.valid] = BELOW_CANDIDATES
            np.put_along_axis(scores[row:row + n], ex.cands.idx, predicted, axis=1)
            row += n
        return scores


@register
class LTRFull(LTRScorer):
    """Every feature: sources, attribute match, text and KG similarity, Feast statistics."""

    name = "ltr_full"


@register
class LTRNoKG(LTRScorer):
    name = "ltr_no_kg"
    ablation = "no_kg"


@register
class LTRNoInstruction(LTRScorer):
    name = "ltr_no_instruction"
    ablation = "no_instruction"


@register
class LTRNoText(LTRScorer):
    name = "ltr_no_text"
    ablation = "no_text"


@register
class LTRTuned(LTRScorer):
    """Every feature, with the instruction-tuned encoder everywhere a text vector is read:
    the embedding candidate source, request-time similarity, and the Feast embedding views
    (rebuilt from it in a repo of their own)."""

    name = "ltr_tuned"
    uses_tuned_encoder = True
