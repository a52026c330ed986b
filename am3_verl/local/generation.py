"""A local generation backend that honours verl's server-manager ``generate`` contract on the CPU.

verl's agent loops talk to vLLM/SGLang servers through ``LLMServerClient.generate(request_id, *,
prompt_ids, sampling_params, image_data=..., ...) -> TokenOutput``. Those servers need CUDA.
:class:`LocalGenerationClient` answers the same call with a Hugging Face model and ``generate`` on the
CPU, so agent loops run end to end on a laptop (tests, the CPU demo, the consistency check).

What it promises, like verl's vLLM server with ``logprobs_mode="processed_logprobs"``:

* ``token_ids`` are the sampled continuation, including the end-of-turn token when one was sampled;
* ``log_probs[i]`` is ``log_softmax(logits / temperature)`` of ``token_ids[i]`` under the model given the
  prompt and the earlier sampled tokens (temperature 0 = greedy, scored at temperature 1). This is the
  quantity verl's actor recomputes for the PPO ratio, so the two agree up to numerics;
* ``extra_fields`` carries ``global_steps``/``min_global_steps``/``max_global_steps`` like verl's client;
* the image/video placeholder tokens are never sampled (a policy-written placeholder would claim an image
  that does not exist and break every later turn's image features);
* with a ``seed``, the sampled tokens do not depend on the order in which concurrent requests arrive: each
  call draws from a generator seeded by the client's seed, the weight version (``global_steps``), the
  request's content (prompt ids and image pixels) and how many earlier calls of this weight version
  carried the same content. Calls with equal content are interchangeable, so a batch of agent loops
  gets the same multiset of samples however its asyncio tasks interleave.

Image inputs: ``image_data`` is every image of the conversation so far (PIL images, in placeholder
order), as verl's agent loops pass them; the prompt's image tokens must already be expanded for them
(verl's token builders do that) and a mismatch raises ``ValueError`` before the model runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import torch
from verl.workers.rollout.replica import TokenOutput


@dataclass
class GenerationCall:
    """What one ``generate`` call received and returned (for tests and diagnostics)."""

    request_id: str
    prompt_length: int
    num_images: int
    image_tokens: int
    image_features: int
    max_tokens: int
    num_generated: int


class LocalGenerationClient:
    """In-process stand-in for verl's ``LLMServerClient`` backed by a Hugging Face VLM on the CPU.

    ``model`` and ``processor`` are a loaded ``*ForConditionalGeneration`` and its processor (the
    tokenizer is ``processor.tokenizer``). ``default_max_tokens`` mirrors verl's behaviour of defaulting
    ``max_tokens`` to the whole ``response_length`` when a caller passes none. Calls are serialised on one
    lock (one model) and run off the event loop. ``seed`` makes the sampled tokens reproducible.
    (A plain class, not a dataclass: hydra would turn a dataclass into a config when verl passes it to
    ``instantiate``.)
    """

    def __init__(self, model: Any, processor: Any, default_max_tokens: int = 256, global_steps: int = 0, seed: Optional[int] = None):
        self.model = model
        self.processor = processor
        self.default_max_tokens = default_max_tokens
        self.global_steps = global_steps
        self.seed = seed
        self.calls: list[GenerationCall] = []
        self._lock = threading.Lock()
        self._content_counts: Counter[bytes] = Counter()
        self._counted_steps = global_steps
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_token_id = getattr(model.config, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(model.config, "image_token_index", None)
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        # Placeholder tokens that only the processor may write: a sampled one would add an image token
        # without an image and desync the features of every later turn. Never sampled (their tiny
        # probability mass aside, the returned log-probs are those of the unmodified model).
        self.suppressed_token_ids = sorted(
            {t for t in (self.image_token_id, getattr(model.config, "video_token_id", None)) if isinstance(t, int)}
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock")  # locks do not pickle; Ray ships the client to its actor
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Sample a continuation of ``prompt_ids`` (see the module docstring for the guarantees)."""
        if video_data or audio_data:
            raise NotImplementedError("LocalGenerationClient handles text and images only")
        return await asyncio.to_thread(self._generate_sync, request_id, list(prompt_ids), dict(sampling_params), image_data)

    def _vision_inputs(self, prompt: torch.Tensor, images: Optional[list[Any]]) -> tuple[dict[str, torch.Tensor], int, int]:
        image_tokens = int((prompt == self.image_token_id).sum()) if self.image_token_id is not None else 0
        if not images:
            if image_tokens:
                raise ValueError(f"prompt holds {image_tokens} image tokens but no image_data was sent")
            return {}, 0, 0
        vision = dict(self.processor.image_processor(images=images, return_tensors="pt"))
        features = self._count_image_features(vision, images)
        if features != image_tokens:
            raise ValueError(f"prompt holds {image_tokens} image tokens but the {len(images)} image(s) give {features} features")
        if "mm_token_type_ids" in getattr(self.processor, "model_input_names", []):
            vision["mm_token_type_ids"] = (prompt == self.image_token_id).long()
        return vision, image_tokens, features

    def _count_image_features(self, vision: dict[str, torch.Tensor], images: list[Any]) -> int:
        if "image_grid_thw" in vision:  # Qwen-VL: patches / merge^2 per image
            merge = self.processor.image_processor.merge_size
            return int(vision["image_grid_thw"].prod(dim=-1).sum()) // (merge * merge)
        # Other processors (LLaVA-NeXT): ask the processor how many tokens it expands the images to.
        placeholder = getattr(self.processor, "image_token", "<image>")
        expanded = self.processor(text=[placeholder * len(images)], images=images, return_tensors="pt")
        return int((expanded["input_ids"] == self.image_token_id).sum())

    @staticmethod
    def _content_key(prompt: torch.Tensor, images: Optional[list[Any]]) -> bytes:
        """Digest of what a request asks for: its prompt ids (a CPU tensor) and its images' pixels."""
        content = hashlib.blake2b(prompt.numpy().tobytes(), digest_size=16)
        for image in images or []:
            pixels = image.numpy() if isinstance(image, torch.Tensor) else image
            content.update(repr((getattr(pixels, "mode", None), getattr(pixels, "size", None), getattr(pixels, "shape", None))).encode())
            content.update(pixels.tobytes())
        return content.digest()

    def _call_seed(self, content_key: bytes) -> int:
        """The sampling seed of one call (see the module docstring); called under the lock."""
        if self._counted_steps != self.global_steps:  # new weights: the occurrence counts start again
            self._content_counts.clear()
            self._counted_steps = self.global_steps
        occurrence = self._content_counts[content_key]
        self._content_counts[content_key] += 1
        seed = hashlib.blake2b(f"{self.seed}:{self.global_steps}:{occurrence}:".encode() + content_key, digest_size=8)
        return int.from_bytes(seed.digest(), "little") >> 1  # torch.manual_seed takes up to 2**63 - 1

    @torch.no_grad()
    def _generate_sync(
        self, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any], images: Optional[list[Any]]
    ) -> TokenOutput:
        max_tokens = int(sampling_params.get("max_tokens") or self.default_max_tokens)
        temperature = float(sampling_params.get("temperature", 1.0))
        top_p = float(sampling_params.get("top_p", 1.0))
        top_k = int(sampling_params.get("top_k", -1))
        greedy = temperature <= 0.0
        score_temperature = 1.0 if greedy else temperature

        prompt = torch.tensor([prompt_ids], dtype=torch.long)
        vision, image_tokens, features = self._vision_inputs(prompt, images)
        content_key = self._content_key(prompt, images) if self.seed is not None else None  # hashed outside the lock
        with self._lock:
            device = self.model.device
            prompt = prompt.to(device)
            vision = {key: value.to(device) for key, value in vision.items()}
            if content_key is not None:
                torch.manual_seed(self._call_seed(content_key))
            output = self.model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                **vision,
                max_new_tokens=max_tokens,
                do_sample=not greedy,
                temperature=None if greedy else temperature,
                top_p=None if greedy else top_p,
                top_k=None if greedy or top_k <= 0 else top_k,
                suppress_tokens=self.suppressed_token_ids or None,
                output_logits=True,
                return_dict_in_generate=True,
            )
        token_ids = output.sequences[0, prompt.shape[1] :].tolist()
        logits = torch.stack(output.logits, dim=1)[0, : len(token_ids)].float().cpu()
        log_probs = torch.log_softmax(logits / score_temperature, dim=-1)
        token_log_probs = log_probs.gather(-1, torch.tensor(token_ids).unsqueeze(-1)).squeeze(-1).tolist()
        # generate() pads finished sequences; keep tokens up to and including the first EOS.
        for i, token in enumerate(token_ids):
            if token in self.eos_token_ids:
                token_ids, token_log_probs = token_ids[: i + 1], token_log_probs[: i + 1]
                break
        self.calls.append(
            GenerationCall(request_id, len(prompt_ids), len(images or []), image_tokens, features, max_tokens, len(token_ids))
        )
        return TokenOutput(
            token_ids=token_ids,
            log_probs=token_log_probs,
            stop_reason="completed",
            extra_fields={
                "global_steps": self.global_steps,
                "min_global_steps": self.global_steps,
                "max_global_steps": self.global_steps,
            },
        )


def load_local_client(model_path: str, **kwargs: Any) -> LocalGenerationClient:
    """Load the model and processor at ``model_path`` (any ``AutoModelForImageTextToText`` VLM) into a client."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    return LocalGenerationClient(model=model, processor=processor, **kwargs)
