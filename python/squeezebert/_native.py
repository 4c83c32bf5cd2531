"""Every ctypes declaration of the binding: the library, its structs and its function signatures.

This is the one place that mirrors include/squeezebert.h and include/squeezebert_pipeline.h, so a
change of the C API is one edit here. ctypes.CDLL releases the GIL for the length of each foreign
call, so other Python threads run while the engine computes.
"""

from __future__ import annotations

import ctypes
import os
from ctypes import (POINTER, Structure, c_bool, c_char, c_char_p, c_double, c_float, c_int,
                    c_int8, c_int32, c_int64, c_long, c_size_t, c_uint64, c_void_p)
from pathlib import Path

SQZ_OK = 0
SQZ_MAX_DIMS = 4
SQZ_MAX_POOL_MODES = 8
SQZ_OUTPUT_FP32 = 0

# sqz_task, in the order of the C enum
TASKS = ("auto", "classify", "embed", "tokens", "qa", "fill-mask")
TASK_AUTO, TASK_CLASSIFY, TASK_EMBED, TASK_TOKENS, TASK_QA, TASK_FILL_MASK = range(len(TASKS))
NORMALIZE_DEFAULT, NORMALIZE_ON, NORMALIZE_OFF = 0, 1, 2


class SessionOptions(Structure):
    _fields_ = [("backend", c_char_p), ("device", c_char_p), ("precision", c_int),
                ("settings", c_char_p), ("debug", c_int), ("guard_bytes", c_size_t),
                ("unfused", c_bool), ("fault_launch", c_char_p), ("fault_alloc", c_char_p)]


class PipelineOptions(Structure):
    _fields_ = [("task", c_int), ("max_length", c_long), ("batch_tokens", c_long),
                ("top_k", c_int), ("max_answer_length", c_int),
                ("pooling", c_int * SQZ_MAX_POOL_MODES), ("pooling_count", c_int),
                ("normalize", c_int)]


class PipelineInfo(Structure):
    _fields_ = [("task", c_int), ("max_length", c_long), ("batch_tokens", c_long),
                ("top_k", c_int), ("max_answer_length", c_int), ("dimension", c_int),
                ("num_labels", c_int)]


class Text(Structure):
    _fields_ = [("text", c_char_p), ("text_len", c_size_t), ("pair", c_char_p),
                ("pair_len", c_size_t)]


class TokenLabel(Structure):
    _fields_ = [("token", c_char_p), ("label", c_int), ("label_name", c_char_p),
                ("score", c_double), ("start", c_size_t), ("end", c_size_t)]


class MaskCandidate(Structure):
    _fields_ = [("token_id", c_int32), ("token", c_char_p), ("score", c_double)]


class Answer(Structure):
    _fields_ = [("task", c_int), ("label", c_int), ("label_name", c_char_p), ("score", c_double),
                ("probabilities", POINTER(c_double)), ("num_labels", c_int),
                ("label_names", POINTER(c_char_p)), ("embedding", POINTER(c_float)),
                ("dimension", c_int), ("tokens", POINTER(TokenLabel)), ("n_tokens", c_size_t),
                ("answer", POINTER(c_char)), ("answer_len", c_size_t), ("start", c_size_t),
                ("end", c_size_t), ("candidates", POINTER(MaskCandidate)), ("n_masks", c_size_t),
                ("per_mask", c_size_t)]


class Input(Structure):
    _fields_ = [("batch", c_int), ("choices", c_int), ("seq_len", c_int),
                ("input_ids", POINTER(c_int64)), ("attention_mask", POINTER(c_int64)),
                ("token_type_ids", POINTER(c_int64))]


class Output(Structure):
    _fields_ = [("name", c_char_p), ("ndim", c_int), ("shape", c_int64 * SQZ_MAX_DIMS),
                ("data", POINTER(c_float)), ("type", c_int), ("values", c_void_p),
                ("device_data", c_void_p), ("bytes", c_size_t)]


class Span(Structure):
    _fields_ = [("start", c_size_t), ("end", c_size_t)]


class Encoding(Structure):
    _fields_ = [("length", c_size_t), ("input_ids", POINTER(c_int64)),
                ("token_type_ids", POINTER(c_int64)), ("attention_mask", POINTER(c_int64)),
                ("offsets", POINTER(Span)), ("sequence_ids", POINTER(c_int8)), ("truncated", c_int)]


class TokenizerInfo(Structure):
    _fields_ = [("vocab_size", c_int), ("do_lower_case", c_int), ("strip_accents", c_int),
                ("tokenize_chinese_chars", c_int), ("clean_text", c_int),
                ("max_input_chars_per_word", c_int), ("model_max_length", c_int),
                ("unk_id", c_int32), ("cls_id", c_int32), ("sep_id", c_int32), ("pad_id", c_int32),
                ("mask_id", c_int32), ("special_token_count", c_size_t)]


# the C struct each mirror stands for (python/tests/test_layout.py checks sizes and offsets)
MIRRORS = {"sqz_session_options": SessionOptions, "sqz_pipeline_options": PipelineOptions,
           "sqz_pipeline_info": PipelineInfo, "sqz_text": Text, "sqz_token_label": TokenLabel,
           "sqz_mask_candidate": MaskCandidate, "sqz_answer": Answer, "sqz_input": Input,
           "sqz_output": Output, "sqz_span": Span, "sqz_encoding": Encoding,
           "sqz_tokenizer_info": TokenizerInfo}

_P = c_void_p  # opaque handles: sqz_model*, sqz_session*, sqz_pipeline*, ...
_PP = POINTER(c_void_p)

# name: (result type, argument types); every sqz_status is a c_int
_SIGNATURES = {
    "sqz_status_str": (c_char_p, [c_int]),
    "sqz_last_error": (c_char_p, []),
    "sqz_model_load": (c_int, [c_char_p, c_void_p, _PP]),  # options NULL: the default limits
    "sqz_model_free": (None, [_P]),
    "sqz_backend_name": (c_char_p, [c_size_t]),
    "sqz_backend_auto": (c_char_p, []),
    "sqz_precision_from_name": (c_int, [c_char_p, POINTER(c_int)]),
    "sqz_session_create": (c_int, [_P, POINTER(SessionOptions), _PP]),
    "sqz_session_free": (None, [_P]),
    "sqz_session_device": (c_char_p, [_P]),
    "sqz_session_select_outputs": (c_int, [_P, POINTER(c_char_p), c_size_t]),
    "sqz_session_run": (c_int, [_P, POINTER(Input), _PP]),
    "sqz_result_count": (c_size_t, [_P]),
    "sqz_result_get": (POINTER(Output), [_P, c_size_t]),
    "sqz_result_free": (None, [_P]),
    "sqz_tokenizer_load": (c_int, [c_char_p, _PP]),
    "sqz_tokenizer_free": (None, [_P]),
    "sqz_tokenizer_get_info": (c_int, [_P, POINTER(TokenizerInfo)]),
    "sqz_tokenizer_encode": (c_int, [_P, c_char_p, c_size_t, c_char_p, c_size_t, c_int,
                                     POINTER(POINTER(Encoding))]),
    "sqz_encoding_free": (None, [POINTER(Encoding)]),
    "sqz_pool_mode_from_name": (c_int, [c_char_p, POINTER(c_int)]),
    "sqz_pipeline_create": (c_int, [_P, _P, POINTER(PipelineOptions), _PP]),
    "sqz_pipeline_free": (None, [_P]),
    "sqz_pipeline_get_info": (c_int, [_P, POINTER(PipelineInfo)]),
    "sqz_pipeline_use_session": (c_int, [_P, _P]),
    "sqz_pipeline_encode": (c_int, [_P, POINTER(Text), _PP]),
    "sqz_pipeline_item_free": (None, [_P]),
    "sqz_pipeline_item_error": (c_char_p, [_P]),
    "sqz_pipeline_item_answer": (POINTER(Answer), [_P]),
    "sqz_pipeline_run": (c_int, [_P, _P, _PP, c_size_t, POINTER(c_size_t)]),
    "sqz_task_from_name": (c_int, [c_char_p, POINTER(c_int)]),
    "sqz_task_name": (c_char_p, [c_int]),
}


def _library_path() -> str:
    """SQZ_LIBRARY (a libsqueezebert.so of a build tree) wins over the copy in the package."""
    override = os.environ.get("SQZ_LIBRARY")
    if override:
        return override
    return str(Path(__file__).resolve().parent / "libsqueezebert.so")


def _load() -> ctypes.CDLL:
    path = _library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise ImportError(f"squeezebert: cannot load the engine library {path}: {exc}") from exc
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


lib = _load()


def text(value: bytes | None) -> str:
    """A C string of the library as Python text (vocabulary entries may hold any bytes)."""
    return "" if value is None else value.decode("utf-8", "replace")


class SqueezeBertError(Exception):
    """A failure of the engine, with the library's message (sqz_last_error) and status name."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status  # sqz_status_str of the failing call ("format error"); None: an input's


def check(status: int, what: str) -> None:
    """Raises SqueezeBertError for a failed call, with the library's message (`what` the call
    only when the library left none). Must run right after the call, on its thread:
    sqz_last_error is per thread."""
    if status != SQZ_OK:
        message = text(lib.sqz_last_error()) or f"{what} failed"
        raise SqueezeBertError(message, text(lib.sqz_status_str(status)))


def create_session(model: c_void_p, backend: str, device: str | None, precision: int,
                   settings: str | None) -> c_void_p:
    """A session of `model` on a backend."""
    options = SessionOptions(backend=backend.encode(),
                             device=device.encode() if device is not None else None,
                             precision=precision,
                             settings=settings.encode() if settings is not None else None)
    session = c_void_p()
    check(lib.sqz_session_create(model, ctypes.byref(options), ctypes.byref(session)),
          f"cannot open a session on backend {backend}")
    return session
