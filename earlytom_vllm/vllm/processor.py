"""Multimodal processor for the EarlyTom architecture: fixes each video's count BEFORE encoding.

It runs in the API-server process, so every validation error here becomes an HTTP 400 for the
request at fault (raised inside the model it would kill the engine). Per video it attaches an
integer plan (:mod:`earlytom_vllm.plan`) that the model decodes; the placeholder count is read
back from that same plan, so the processor and the model cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from transformers import BatchFeature
from vllm.exceptions import VLLMValidationError
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdate

from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.plan import VideoPlan, request_config
from earlytom_vllm.vllm.compat import encoder_depth

KWARG = "earlytom"  # key in mm_processor_kwargs
PLAN_FIELD = "earlytom_plan"  # per-video int64 row carried to the model


class EarlyTomValidationError(VLLMValidationError, ValueError):
    """Bad ``earlytom`` settings in a request: HTTP 400 in vLLM's server, a ValueError offline."""


def _strip(kwargs: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in kwargs.items() if k != KWARG}


class EarlyTomProcessingInfo(LlavaOnevisionProcessingInfo):
    @cached_property
    def earlytom_defaults(self) -> EarlyTomConfig:
        """Server-wide defaults from ``--hf-overrides '{"earlytom": {...}}'`` (validated)."""
        raw = getattr(self.get_hf_config(), KWARG, None)
        try:
            return EarlyTomConfig.from_dict(raw)
        except ValueError as exc:
            raise ValueError(f"invalid hf_overrides.earlytom: {exc}") from None

    @cached_property
    def encoder_depth(self) -> int:
        return encoder_depth(self.get_hf_config())

    def get_hf_processor(self, **kwargs: object):
        # Never forward our key to transformers: each distinct value would build another
        # cached HF processor instance.
        kwargs.pop(KWARG, None)
        return super().get_hf_processor(**kwargs)

    def get_num_frames_with_most_features(self, seq_len: int, mm_counts: Mapping[str, int]) -> int:
        # Upstream caps the profiling dummy at 16 frames; profile the real maximum we serve.
        max_videos = max(mm_counts.get("video", 0), 1)
        fits = self._get_max_video_frames(seq_len) // max_videos
        return max(1, min(fits, self.earlytom_defaults.max_frames))

    def resolve_config(self, hf_kwargs: Mapping[str, object]) -> EarlyTomConfig:
        """The request's effective config; raises a validation error that names the field."""
        overrides = hf_kwargs.get(KWARG)
        try:
            config = request_config(self.earlytom_defaults, overrides)
            if config.prune_layers[-1] >= self.encoder_depth:
                raise ValueError(
                    f"earlytom.prune_layers {list(config.prune_layers)} must be below the "
                    f"vision encoder depth {self.encoder_depth}"
                )
            return config
        except ValueError as exc:
            raise EarlyTomValidationError(
                f"Invalid mm_processor_kwargs: {exc}",
                parameter="mm_processor_kwargs.earlytom",
                value=overrides,
            ) from None


class EarlyTomDummyInputsBuilder(LlavaOnevisionDummyInputsBuilder):
    pass


class EarlyTomMultiModalProcessor(LlavaOnevisionMultiModalProcessor):
    info: EarlyTomProcessingInfo

    def get_dummy_inputs(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any):
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        # Size the encoder cache (and profile memory) for the largest count a request may ask
        # for: full tokens. Otherwise a request with a higher ratio than the default would be
        # rejected as exceeding the pre-allocated encoder cache.
        inputs.hf_processor_mm_kwargs = {
            **inputs.hf_processor_mm_kwargs,
            KWARG: {"retain_ratio": 1.0},
        }
        return inputs

    def _apply_hf_processor_main(self, mm_items: MultiModalDataItems,
                                 hf_kwargs: Mapping[str, object]) -> BatchFeature:
        config = self.info.resolve_config(hf_kwargs)  # validate even for image-only requests
        processed = super()._apply_hf_processor_main(mm_items, _strip(hf_kwargs))
        videos = processed.get("pixel_values_videos")
        if videos is not None:
            frames = [int(v.shape[0]) for v in videos]  # [V, F, C, H, W] or list of [F, C, H, W]
            plans = [VideoPlan.build(f, config).encode() for f in frames]
            processed[PLAN_FIELD] = torch.tensor(plans, dtype=torch.int64)  # [V, PLAN_WIDTH]
        return processed

    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, _strip(hf_processor_mm_kwargs)))
        fields[PLAN_FIELD] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items: MultiModalDataItems,
                            hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        updates = list(super()._get_prompt_updates(mm_items, _strip(hf_processor_mm_kwargs),
                                                   out_mm_kwargs))
        videos = out_mm_kwargs.get("video", [])
        if not videos or any(item is None or PLAN_FIELD not in item for item in videos):
            return updates  # no pixel videos (e.g. embeddings): the stock count applies
        video_token_id = self.info.get_hf_config().video_token_index

        def replacement(item_idx: int) -> list[int]:
            row = videos[item_idx][PLAN_FIELD].data.tolist()
            return [video_token_id] * VideoPlan.decode(row).rows

        return [
            *(u for u in updates if u.modality != "video"),
            PromptReplacement(modality="video", target=[video_token_id], replacement=replacement),
        ]
