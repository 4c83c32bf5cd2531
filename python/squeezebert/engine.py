"""squeezebert.Engine: a model on one device, answering texts through the library's text pipeline.

Tokenizing, truncation, batching, packed runs and every task's answer are the C library's
(include/squeezebert_pipeline.h), the same code `sqz infer` runs; this module only moves texts in
and answers out.
"""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import byref, c_int, c_void_p
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native as N
from ._native import SqueezeBertError, check, lib, text

TextLike = Union[str, bytes]
Answer = Dict[str, Any]


def _utf8(value: TextLike, what: str) -> bytes:
    if isinstance(value, bytes):
        return value  # passed as is: the library names invalid UTF-8 by byte
    if isinstance(value, str):
        # lone surrogates reach the library as the bytes they would be, which it refuses by name
        return value.encode("utf-8", "surrogatepass")
    raise TypeError(f"{what} must be str or bytes, got {type(value).__name__}")


def _texts(values: Union[TextLike, Sequence[TextLike]], what: str) -> Tuple[List[bytes], bool]:
    """The inputs as UTF-8 bytes, and whether a single text (not a list) was given."""
    if isinstance(values, (str, bytes)):
        return [_utf8(values, what)], True
    return [_utf8(v, f"{what}[{i}]") for i, v in enumerate(values)], False


def pick_backend(wanted: str = "auto") -> str:
    """The backend `wanted` stands for: for "auto" the library's choice (sqz_backend_auto, the
    same as `sqz --backend auto`): cuda when a CUDA device is there, else opencl on an OpenCL
    GPU, else cpu, else opencl, else cpu_ref. Any other name is returned as given."""
    return text(lib.sqz_backend_auto()) if wanted == "auto" else wanted


def backends() -> List[str]:
    """The backends compiled into the library (not all may have a device here)."""
    names, i = [], 0
    while True:
        name = lib.sqz_backend_name(i)
        if name is None:
            return names
        names.append(text(name))
        i += 1


class Engine:
    """A model folder (a transformers checkpoint with its tokenizer files) opened on one backend.

    >>> with squeezebert.Engine("my-model") as engine:
    ...     engine.classify(["a fine day", "rain again"])

    backend: "auto" (as `sqz --backend auto`), "cpu", "cpu_ref", "opencl", "cuda";
    device: None for the backend's default, or an index or name part as `sqz devices` lists;
    precision: "fp32", "tf32", "fp16" or "bf16" (what the backend supports);
    batch_tokens: padded tokens per batch (0: the library's 8192);
    max_length: tokens per input after truncation (0: the task's default, docs/infer.md);
    settings: backend settings "BACKEND.KEY=VALUE;..." (docs/engineering.md).

    One engine may be shared by threads: runs on its session take turns, and the GIL is released
    while the engine computes. Failures raise SqueezeBertError with the library's message.
    """

    def __init__(self, model_dir: Union[str, "os.PathLike[str]"], backend: str = "auto",
                 device: Optional[str] = None, precision: str = "fp32", *, batch_tokens: int = 0,
                 max_length: int = 0, settings: Optional[str] = None):
        self._model = c_void_p()
        self._tokenizer = c_void_p()
        self._session = c_void_p()
        self._pipelines: Dict[tuple, c_void_p] = {}
        self._lock = threading.Lock()  # the session: one run at a time
        self._pipelines_lock = threading.Lock()  # the pipeline cache
        self._batch_tokens = int(batch_tokens)
        self._max_length = int(max_length)
        self._no_tokenizer: Optional[SqueezeBertError] = None
        path = os.fsencode(model_dir)
        try:
            check(lib.sqz_model_load(path, None, byref(self._model)), f"cannot load the model {os.fsdecode(path)}")
            # a folder without tokenizer files still runs forward(); the text methods say why not
            try:
                check(lib.sqz_tokenizer_load(path, byref(self._tokenizer)),
                      f"cannot load the tokenizer of {os.fsdecode(path)}")
            except SqueezeBertError as exc:
                self._no_tokenizer = exc
            level = c_int()
            check(lib.sqz_precision_from_name(precision.encode(), byref(level)), "precision")
            self.backend: str = pick_backend(backend)
            self._session = N.create_session(self._model, self.backend, device, level.value, settings)
            self.device: str = text(lib.sqz_session_device(self._session))
        except BaseException:
            self.close()
            raise

    # ---- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Frees the session, model and tokenizer (also done on leaving a `with` block); waits
        for a run in another thread to end first."""
        with self._lock:
            self._free()

    def _free(self) -> None:
        for pipe in self._pipelines.values():
            lib.sqz_pipeline_free(pipe)
        self._pipelines.clear()
        if self._session:
            lib.sqz_session_free(self._session)
            self._session = c_void_p()
        if self._tokenizer:
            lib.sqz_tokenizer_free(self._tokenizer)
            self._tokenizer = c_void_p()
        if self._model:
            lib.sqz_model_free(self._model)
            self._model = c_void_p()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lock", None) is not None:  # not when __init__ never ran
            self.close()

    def _require_open(self) -> None:
        if not self._session:
            raise SqueezeBertError("the engine is closed")

    @property
    def task(self) -> str:
        """The task of the checkpoint's head ("classify", "embed", "tokens", "qa", "fill-mask"),
        what answers() gives by default."""
        return self._info(self._pipeline()).task

    def _require_tokenizer(self) -> None:
        self._require_open()
        if self._no_tokenizer is not None:
            raise SqueezeBertError(self._no_tokenizer.message, self._no_tokenizer.status)

    # ---- pipelines ---------------------------------------------------------------------------

    def _pipeline(self, task: str = "auto", top_k: int = 0, max_answer_length: int = 0,
                  pooling: Optional[Sequence[str]] = None, normalize: Optional[bool] = None) -> c_void_p:
        """The library's pipeline for these options, made once and kept (pipelines are immutable)."""
        self._require_tokenizer()
        key = (task, top_k, max_answer_length, tuple(pooling or ()), normalize)
        with self._pipelines_lock:
            pipe = self._pipelines.get(key)
            if pipe is None:
                pipe = self._pipelines[key] = self._new_pipeline(task, top_k, max_answer_length,
                                                                 pooling, normalize)
            return pipe

    def _new_pipeline(self, task: str, top_k: int, max_answer_length: int,
                      pooling: Optional[Sequence[str]], normalize: Optional[bool]) -> c_void_p:
        opt = N.PipelineOptions(max_length=self._max_length, batch_tokens=self._batch_tokens,
                                top_k=top_k, max_answer_length=max_answer_length)
        task_id = c_int()
        check(lib.sqz_task_from_name(task.encode(), byref(task_id)), "task")
        opt.task = task_id.value
        if pooling:
            if len(pooling) > N.SQZ_MAX_POOL_MODES:
                raise SqueezeBertError(f"pooling takes at most {N.SQZ_MAX_POOL_MODES} modes")
            for i, name in enumerate(pooling):
                mode = c_int()
                check(lib.sqz_pool_mode_from_name(name.encode(), byref(mode)), "pooling")
                opt.pooling[i] = mode.value
            opt.pooling_count = len(pooling)
        if normalize is not None:
            opt.normalize = N.NORMALIZE_ON if normalize else N.NORMALIZE_OFF
        pipe = c_void_p()
        check(lib.sqz_pipeline_create(self._model, self._tokenizer, byref(opt), byref(pipe)),
              f"cannot answer task {task} with this model")
        return pipe

    @staticmethod
    def _info(pipe: c_void_p) -> "Engine._PipelineInfo":
        info = N.PipelineInfo()
        check(lib.sqz_pipeline_get_info(pipe, byref(info)), "pipeline info")
        return Engine._PipelineInfo(N.TASKS[info.task], info.dimension, info.num_labels)

    class _PipelineInfo:
        def __init__(self, task: str, dimension: int, num_labels: int):
            self.task, self.dimension, self.num_labels = task, dimension, num_labels

    @staticmethod
    def _answer_dict(a: "N.Answer") -> Answer:
        """An answer's fields, named and ordered as `sqz infer` writes them (docs/infer.md)."""
        if a.task == N.TASK_CLASSIFY:
            return {"label": text(a.label_name), "score": a.score,
                    "scores": {text(a.label_names[i]): a.probabilities[i] for i in range(a.num_labels)}}
        if a.task == N.TASK_EMBED:
            return {"embedding": np.ctypeslib.as_array(a.embedding, (a.dimension,)).copy()}
        if a.task == N.TASK_TOKENS:
            return {"tokens": [{"token": text(t.token), "label": text(t.label_name), "score": t.score,
                                "start": t.start, "end": t.end}
                               for t in (a.tokens[i] for i in range(a.n_tokens))]}
        if a.task == N.TASK_QA:
            span = ctypes.string_at(a.answer, a.answer_len) if a.answer_len else b""
            return {"answer": span.decode("utf-8", "replace"), "start": a.start, "end": a.end,
                    "score": a.score}
        if a.task == N.TASK_FILL_MASK:
            per = a.per_mask
            return {"masks": [[{"token": text(c.token), "token_id": c.token_id, "score": c.score}
                               for c in (a.candidates[m * per + k] for k in range(per))]
                              for m in range(a.n_masks)]}
        raise SqueezeBertError(f"an answer of unknown task {a.task}")

    def _run(self, pipe: c_void_p, inputs: List[Tuple[bytes, Optional[bytes]]]) -> List[Answer]:
        """Encodes, runs and answers every input; an input that fails gets {"error": message}."""
        n = len(inputs)
        items = (c_void_p * max(n, 1))()
        try:
            for i, (first, second) in enumerate(inputs):
                one = N.Text(first, len(first), second, len(second) if second else 0)
                item = c_void_p()
                check(lib.sqz_pipeline_encode(pipe, byref(one), byref(item)), f"input {i}")
                items[i] = item
            if n:
                with self._lock:
                    self._require_open()
                    check(lib.sqz_pipeline_use_session(pipe, self._session), "selecting outputs")
                    check(lib.sqz_pipeline_run(pipe, self._session, items, n, None), "run")
            answers: List[Answer] = []
            for i in range(n):
                error = lib.sqz_pipeline_item_error(items[i])
                if error is not None:
                    answers.append({"error": text(error)})
                else:
                    answers.append(self._answer_dict(lib.sqz_pipeline_item_answer(items[i]).contents))
            return answers
        finally:
            for i in range(n):
                if items[i]:
                    lib.sqz_pipeline_item_free(items[i])

    @staticmethod
    def _raise_errors(answers: List[Answer]) -> None:
        for i, a in enumerate(answers):
            if "error" in a:
                raise SqueezeBertError(f"input {i}: {a['error']}")

    # ---- tasks -------------------------------------------------------------------------------

    def answers(self, texts: Union[TextLike, Sequence[TextLike]],
                pairs: Optional[Sequence[Optional[TextLike]]] = None, *, task: str = "auto",
                top_k: int = 0, max_answer_length: int = 0, pooling: Optional[Sequence[str]] = None,
                normalize: Optional[bool] = None) -> List[Answer]:
        """The answer of each text (with its pair: for qa the question and its context) for a
        task ("auto": the checkpoint's head), as dicts with the fields `sqz infer` writes
        (docs/infer.md; an embedding as a float32 array), in input order. An input that cannot be
        answered gets {"error": message} and the others go on."""
        firsts, _ = _texts(texts, "texts")
        seconds: List[Optional[bytes]] = [None] * len(firsts)
        if pairs is not None:
            if isinstance(pairs, (str, bytes)) or len(pairs) != len(firsts):
                raise ValueError(f"pairs must be a list as long as texts ({len(firsts)})")
            seconds = [None if p is None else _utf8(p, f"pairs[{i}]") for i, p in enumerate(pairs)]
        pipe = self._pipeline(task, top_k, max_answer_length, pooling, normalize)
        return self._run(pipe, list(zip(firsts, seconds)))

    def _task(self, task: str, texts: Union[TextLike, Sequence[TextLike]],
              pairs: Optional[Sequence[Optional[TextLike]]] = None, **options: Any) -> Any:
        single = isinstance(texts, (str, bytes))
        answers = self.answers(texts, pairs, task=task, **options)
        self._raise_errors(answers)
        return answers[0] if single else answers

    def embed(self, texts: Union[TextLike, Sequence[TextLike]], *, pooling: Optional[Sequence[str]] = None,
              normalize: Optional[bool] = None) -> np.ndarray:
        """Sentence embeddings as sentence-transformers computes them from the folder (else the
        pooler output): float32 [n, dim] ([dim] for one text). pooling ("cls", "mean", "max",
        "mean_sqrt_len_tokens", "weightedmean", "lasttoken", "pooler") and normalize override
        the checkpoint's."""
        single = isinstance(texts, (str, bytes))
        pipe = self._pipeline("embed", pooling=pooling, normalize=normalize)
        dim = self._info(pipe).dimension
        answers = self.answers(texts, task="embed", pooling=pooling, normalize=normalize)
        self._raise_errors(answers)
        out = np.empty((len(answers), dim), dtype=np.float32)
        for i, a in enumerate(answers):
            out[i] = a["embedding"]
        return out[0] if single else out

    def classify(self, texts: Union[TextLike, Sequence[TextLike]],
                 pairs: Optional[Sequence[Optional[TextLike]]] = None) -> Any:
        """{"label", "score", "scores": {label: probability}} per text (or text pair)."""
        return self._task("classify", texts, pairs)

    def tokens(self, texts: Union[TextLike, Sequence[TextLike]]) -> Any:
        """{"tokens": [{"token", "label", "score", "start", "end"}]} per text; start/end in code
        points of the text."""
        return self._task("tokens", texts)

    def qa(self, questions: Union[TextLike, Sequence[TextLike]],
           contexts: Union[TextLike, Sequence[TextLike]], *, max_answer_length: int = 0) -> Any:
        """{"answer", "start", "end", "score"} per question, the span of its context."""
        if isinstance(questions, (str, bytes)) != isinstance(contexts, (str, bytes)):
            raise ValueError("give one question and one context, or lists of both")
        if isinstance(contexts, (str, bytes)):
            return self._task("qa", questions, [contexts], max_answer_length=max_answer_length)
        return self._task("qa", questions, contexts, max_answer_length=max_answer_length)

    def fill_mask(self, texts: Union[TextLike, Sequence[TextLike]], top_k: int = 5) -> Any:
        """{"masks": [[{"token", "token_id", "score"}] * top_k per [MASK]]} per text."""
        if top_k < 1:
            raise ValueError(f"top_k must be 1 or more, got {top_k}")
        return self._task("fill-mask", texts, top_k=top_k)

    # ---- tokens and raw runs -----------------------------------------------------------------

    def tokenize(self, texts: Union[TextLike, Sequence[TextLike]],
                 pairs: Optional[Sequence[Optional[TextLike]]] = None, *, max_length: int = 0,
                 padding: bool = False) -> Dict[str, Any]:
        """input_ids, token_type_ids and attention_mask as the checkpoint's tokenizer gives them
        ([CLS] text [SEP] (pair [SEP]); max_length > 0 truncates longest-first): lists of lists,
        or with padding=True int64 arrays [n, longest] padded with the pad id and mask 0, ready
        for forward()."""
        self._require_tokenizer()
        firsts, _ = _texts(texts, "texts")
        seconds: List[Optional[bytes]] = [None] * len(firsts)
        if pairs is not None:
            if len(pairs) != len(firsts):
                raise ValueError(f"pairs must be a list as long as texts ({len(firsts)})")
            seconds = [None if p is None else _utf8(p, f"pairs[{i}]") for i, p in enumerate(pairs)]
        rows: Dict[str, List[List[int]]] = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
        enc = ctypes.POINTER(N.Encoding)()
        try:
            for i, (a, b) in enumerate(zip(firsts, seconds)):
                check(lib.sqz_tokenizer_encode(self._tokenizer, a, len(a), b, len(b) if b else 0,
                                               int(max_length), byref(enc)), f"input {i}")
                e = enc.contents
                for name in rows:
                    rows[name].append(getattr(e, name)[:e.length])
        finally:
            if enc:
                lib.sqz_encoding_free(enc)
        if not padding:
            return rows
        info = N.TokenizerInfo()
        check(lib.sqz_tokenizer_get_info(self._tokenizer, byref(info)), "tokenizer info")
        width = max((len(r) for r in rows["input_ids"]), default=0)
        padded = {}
        for name, fill in (("input_ids", max(info.pad_id, 0)), ("token_type_ids", 0), ("attention_mask", 0)):
            arr = np.full((len(firsts), width), fill, dtype=np.int64)
            for i, r in enumerate(rows[name]):
                arr[i, :len(r)] = r
            padded[name] = arr
        return padded

    def forward(self, input_ids: Any, attention_mask: Any = None,
                token_type_ids: Any = None) -> Dict[str, np.ndarray]:
        """One padded batch through the model: [batch, seq] ids ([batch, choices, seq] for a
        multiple-choice head), mask 1 for tokens and 0 for padding (None: all ones), token types
        (None: zeros). Returns every output as float32 arrays named as transformers names them
        (last_hidden_state, pooler_output, logits, start_logits, end_logits); values at masked
        positions are unspecified (the library writes 0)."""
        self._require_open()
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim not in (2, 3) or ids.size == 0:
            raise ValueError(f"input_ids must be a non-empty [batch, seq] or [batch, choices, seq] "
                             f"array, got shape {ids.shape}")
        arrays = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        for name, value in arrays.items():
            if value is not None:
                value = np.ascontiguousarray(value, dtype=np.int64)
                if value.shape != ids.shape:
                    raise ValueError(f"{name} has shape {value.shape}, input_ids {ids.shape}")
            arrays[name] = value

        def pointer(a: Optional[np.ndarray]) -> Any:
            return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))

        batch = N.Input(batch=ids.shape[0], choices=ids.shape[1] if ids.ndim == 3 else 0,
                        seq_len=ids.shape[-1], input_ids=pointer(ids),
                        attention_mask=pointer(arrays["attention_mask"]),
                        token_type_ids=pointer(arrays["token_type_ids"]))
        result = c_void_p()
        with self._lock:
            self._require_open()
            check(lib.sqz_session_select_outputs(self._session, None, 0), "selecting outputs")
            check(lib.sqz_session_run(self._session, byref(batch), byref(result)), "run")
        try:
            outputs: Dict[str, np.ndarray] = {}
            for i in range(lib.sqz_result_count(result)):
                o = lib.sqz_result_get(result, i).contents
                shape = tuple(o.shape[d] for d in range(o.ndim))
                outputs[text(o.name)] = np.ctypeslib.as_array(o.data, shape).copy()
            return outputs
        finally:
            lib.sqz_result_free(result)
