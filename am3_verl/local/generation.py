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
  call draws from its own generator, seeded by the client's seed, the weight version (``global_steps``),
  the request's content (prompt ids, image pixels and sampling settings) and how many earlier calls of
  this weight version carried the same content. Calls with equal content are interchangeable, so a batch of agent loops
  gets the same multiset of samples however its asyncio tasks interleave;
* concurrent calls are answered together: the requests waiting when the model is free (up to
  ``max_batch_size``, with vision inputs of one shape) go through one left-padded ``generate``. Each row
  still draws from its own generator (Gumbel-max sampling, :class:`PerRowSampler`), so a request samples
  the same tokens alone or in any batch. Only the logits' last bits depend on the batch (padding and
  batch size change the order of floating-point sums), and they change a sample only when a row's two
  largest noise-perturbed logits lie within rounding of each other.

Image inputs: ``image_data`` is every image of the conversation so far (PIL images, in placeholder
order), as verl's agent loops pass them; the prompt's image tokens must already be expanded for them
(verl's token builders do that) and a mismatch raises ``ValueError`` before the model runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from transformers import LogitsProcessor, LogitsProcessorList
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
    batch_size: int = 1
    """How many requests the ``generate`` that answered this one served together."""


@dataclass
class PreparedRequest:
    """One validated request, ready to join a batch."""

    request_id: str
    prompt: torch.Tensor
    """``[length]`` prompt ids (CPU)."""
    vision: dict[str, torch.Tensor]
    """The image processor's tensors for the request's images (``mm_token_type_ids`` per prompt token)."""
    num_images: int
    image_tokens: int
    image_features: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: Optional[int]
    future: Any = field(default=None, repr=False)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def batch_signature(self) -> tuple:
        """Requests batch together when their vision tensors concatenate along the first dimension."""
        return tuple(sorted((key, tuple(value.shape[1:])) for key, value in self.vision.items() if key != "mm_token_type_ids"))


class PerRowSampler(LogitsProcessor):
    """Chooses each row's next token with that row's sampling settings and its own generator.

    Run inside a greedy ``generate``: it returns scores that are ``-inf`` everywhere but the chosen token,
    so the greedy pick is its choice. Temperature, top-k and top-p are applied as vLLM applies them;
    ``suppressed`` tokens are never chosen. Greedy rows take the arg-max.
    """

    def __init__(self, requests: list[PreparedRequest], suppressed: list[int]):
        self.requests = requests
        self.suppressed = suppressed
        self.generators = []
        for request in requests:
            generator = torch.Generator()
            if request.seed is not None:
                generator.manual_seed(request.seed)
            else:
                generator.seed()
            self.generators.append(generator)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Never write into ``scores``: generate() keeps that tensor as the step's raw logits (output_logits),
        # from which the returned log-probs are computed.
        scores = scores.float().clone()
        if self.suppressed:
            scores[:, self.suppressed] = float("-inf")
        temperatures = torch.tensor([r.temperature if not r.greedy else 1.0 for r in self.requests], device=scores.device)
        logits = scores / temperatures.unsqueeze(-1)
        for row, request in enumerate(self.requests):
            if request.greedy:
                continue
            if 0 < request.top_k < logits.shape[-1]:
                kth = torch.topk(logits[row], request.top_k).values[-1]
                logits[row] = logits[row].masked_fill(logits[row] < kth, float("-inf"))
            if request.top_p < 1.0:
                sorted_logits, order = logits[row].sort(descending=True)
                sorted_probs = torch.softmax(sorted_logits, dim=-1)
                # keep the smallest prefix whose mass reaches top_p (the token that crosses it included)
                drop = (sorted_probs.cumsum(-1) - sorted_probs) >= request.top_p
                logits[row] = logits[row].scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits). Each row's noise comes from its
        # own generator, and a draw changes with the logits' rounding only if the top two perturbed values lie
        # within it (an inverse-CDF draw in vocabulary order moves whenever a boundary near the draw does).
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators]).to(scores.device)
        gumbel = -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(torch.float32).tiny)))
        chosen = (logits + gumbel).argmax(dim=-1)
        greedy = torch.tensor([r.greedy for r in self.requests], device=scores.device)
        chosen = torch.where(greedy, scores.argmax(dim=-1), chosen)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), chosen] = 0.0
        return out


class LocalGenerationClient:
    """In-process stand-in for verl's ``LLMServerClient`` backed by a Hugging Face VLM on the CPU.

    ``model`` and ``processor`` are a loaded ``*ForConditionalGeneration`` and its processor (the
    tokenizer is ``processor.tokenizer``). ``default_max_tokens`` mirrors verl's behaviour of defaulting
    ``max_tokens`` to the whole ``response_length`` when a caller passes none. The model runs off the
    event loop, one ``generate`` at a time; concurrent calls share it in batches of up to
    ``max_batch_size`` (module docstring). ``seed`` makes the sampled tokens reproducible.
    (A plain class, not a dataclass: hydra would turn a dataclass into a config when verl passes it to
    ``instantiate``.)
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        default_max_tokens: int = 256,
        global_steps: int = 0,
        seed: Optional[int] = None,
        max_batch_size: int = 64,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model
        self.processor = processor
        self.default_max_tokens = default_max_tokens
        self.global_steps = global_steps
        self.seed = seed
        self.max_batch_size = max_batch_size
        self.calls: list[GenerationCall] = []
        self._content_counts: Counter[bytes] = Counter()
        self._counted_steps = global_steps
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_token_id = getattr(model.config, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(model.config, "image_token_index", None)
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        pad = model.generation_config.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.pad_token_id
        # Placeholder tokens that only the processor may write: a sampled one would add an image token
        # without an image and desync the features of every later turn. Never sampled (their tiny
        # probability mass aside, the returned log-probs are those of the unmodified model).
        self.suppressed_token_ids = sorted(
            {t for t in (self.image_token_id, getattr(model.config, "video_token_id", None)) if isinstance(t, int)}
        )
        self._init_runtime_state()

    def _init_runtime_state(self) -> None:
        self._model_lock = threading.Lock()
        self._seed_lock = threading.Lock()
        self._pending: list[PreparedRequest] = []
        self._preparing = 0
        self._batch_running = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_model_lock", "_seed_lock", "_pending", "_preparing", "_batch_running"):
            state.pop(key)  # locks and waiting requests do not pickle; Ray ships the client to its actor
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime_state()

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
        self._preparing += 1
        try:
            request = await asyncio.to_thread(self._prepare, request_id, list(prompt_ids), dict(sampling_params), image_data)
        finally:
            self._preparing -= 1
        request.future = asyncio.get_running_loop().create_future()
        self._pending.append(request)
        if not self._batch_running:
            await self._run_batches()
        return await request.future

    async def _run_batches(self) -> None:
        """Serve waiting requests in batches until none is left (one caller at a time runs this)."""
        self._batch_running = True
        batch: list[PreparedRequest] = []
        try:
            while self._pending:
                # Requests still being prepared (image processing, in threads) join this batch when it has room.
                while self._preparing and len(self._pending) < self.max_batch_size:
                    await asyncio.sleep(0.001)
                batch = self._take_batch()
                try:
                    outputs = await asyncio.to_thread(self._generate_batch, batch)
                except Exception as error:  # every request of the batch gets the error, none waits forever
                    for request in batch:
                        request.future.set_exception(error)
                    continue
                for request, output in zip(batch, outputs):
                    request.future.set_result(output)
        finally:
            self._batch_running = False
            for request in [*batch, *self._pending]:  # the runner was cancelled: fail the rest rather than leave them waiting
                if not request.future.done():
                    request.future.set_exception(RuntimeError("generation stopped before this request was served"))
            self._pending.clear()

    def _take_batch(self) -> list[PreparedRequest]:
        """The oldest waiting request and, in arrival order, the others that can share its batch."""
        signature = self._pending[0].batch_signature()
        batch = [r for r in self._pending if r.batch_signature() == signature][: self.max_batch_size]
        taken = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        return batch

    def _prepare(
        self, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any], images: Optional[list[Any]]
    ) -> PreparedRequest:
        """Validate a request and process its images; draws its sampling seed (arrival order of equal content)."""
        prompt = torch.tensor(prompt_ids, dtype=torch.long)
        vision, image_tokens, features = self._vision_inputs(prompt.unsqueeze(0), images)
        request = PreparedRequest(
            request_id=request_id,
            prompt=prompt,
            vision=vision,
            num_images=len(images or []),
            image_tokens=image_tokens,
            image_features=features,
            max_tokens=int(sampling_params.get("max_tokens") or self.default_max_tokens),
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_p=float(sampling_params.get("top_p", 1.0)),
            top_k=int(sampling_params.get("top_k", -1)),
            seed=None,
        )
        if self.seed is not None:
            # Requests are interchangeable only if they ask for the same thing in the same way.
            settings = (request.max_tokens, request.temperature, request.top_p, request.top_k)
            content_key = self._content_key(prompt.unsqueeze(0), images, repr(settings).encode())
            with self._seed_lock:
                request.seed = self._call_seed(content_key)
        return request

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
    def _content_key(prompt: torch.Tensor, images: Optional[list[Any]], settings: bytes = b"") -> bytes:
        """Digest of what a request asks for: its prompt ids (a CPU tensor), its images' pixels and its sampling settings."""
        content = hashlib.blake2b(prompt.numpy().tobytes(), digest_size=16)
        content.update(settings)
        for image in images or []:
            pixels = image.numpy() if isinstance(image, torch.Tensor) else image
            content.update(repr((getattr(pixels, "mode", None), getattr(pixels, "size", None), getattr(pixels, "shape", None))).encode())
            content.update(pixels.tobytes())
        return content.digest()

    def _call_seed(self, content_key: bytes) -> int:
        """The sampling seed of one call (see the module docstring); called under the seed lock."""
        if self._counted_steps != self.global_steps:  # new weights: the occurrence counts start again
            self._content_counts.clear()
            self._counted_steps = self.global_steps
        occurrence = self._content_counts[content_key]
        self._content_counts[content_key] += 1
        seed = hashlib.blake2b(f"{self.seed}:{self.global_steps}:{occurrence}:".encode() + content_key, digest_size=8)
        return int.from_bytes(seed.digest(), "little") >> 1  # torch.manual_seed takes up to 2**63 - 1

    @torch.no_grad()
    def _generate_batch(self, batch: list[PreparedRequest]) -> list[TokenOutput]:
        """One left-padded ``generate`` for ``batch`` (requests of one :meth:`PreparedRequest.batch_signature`)."""
        length = max(len(r.prompt) for r in batch)
        input_ids = torch.full((len(batch), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, request in enumerate(batch):
            input_ids[row, length - len(request.prompt) :] = request.prompt
            attention_mask[row, length - len(request.prompt) :] = 1
        vision: dict[str, torch.Tensor] = {}
        for key in batch[0].vision:
            if key == "mm_token_type_ids":  # per prompt token: left-padded like the ids
                types = torch.zeros((len(batch), length), dtype=torch.long)
                for row, request in enumerate(batch):
                    types[row, length - len(request.prompt) :] = request.vision[key][0]
                vision[key] = types
            else:
                vision[key] = torch.cat([request.vision[key] for request in batch], dim=0)
        with self._model_lock:
            device = self.model.device
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                **{key: value.to(device) for key, value in vision.items()},
                max_new_tokens=max(r.max_tokens for r in batch),
                do_sample=False,  # PerRowSampler chooses every token; the greedy pick takes its choice
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=LogitsProcessorList([PerRowSampler(batch, self.suppressed_token_ids)]),
                pad_token_id=self.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        generated = output.sequences[:, length:]
        # Each step's log-prob of the chosen token, step by step: the full [batch, steps, vocab] logits are never stacked.
        temperatures = torch.tensor([1.0 if r.greedy else r.temperature for r in batch], device=generated.device).unsqueeze(-1)
        chosen_log_probs = torch.stack(
            [
                torch.log_softmax(step.float() / temperatures, dim=-1).gather(-1, generated[:, k : k + 1]).squeeze(-1)
                for k, step in enumerate(output.logits)
            ],
            dim=1,
        ).cpu()
        generated = generated.cpu()
        return [self._token_output(request, generated[row], chosen_log_probs[row], len(batch)) for row, request in enumerate(batch)]

    def _token_output(self, request: PreparedRequest, generated: torch.Tensor, log_probs: torch.Tensor, batch_size: int) -> TokenOutput:
        """One row of a batch as verl's ``TokenOutput``: its own ``max_tokens``, cut after its first end-of-turn token."""
        token_ids = generated[: request.max_tokens].tolist()
        for i, token in enumerate(token_ids):
            if token in self.eos_token_ids:
                token_ids = token_ids[: i + 1]
                break
        token_log_probs = log_probs[: len(token_ids)].tolist()
        self.calls.append(
            GenerationCall(request.request_id, len(request.prompt), request.num_images, request.image_tokens,
                           request.image_features, request.max_tokens, len(token_ids), batch_size)
        )  # fmt: skip
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
