/* Prints the size and field offsets of every struct python/squeezebert/_native.py mirrors, so
 * test_layout.py can check the ctypes mirrors against the headers as compiled (a field added to
 * a header and not to the mirror fails there, not as memory read past a Python struct). */
#include <stddef.h>
#include <stdio.h>

#include "squeezebert.h"
#include "squeezebert_pipeline.h"

#define SIZE(type) printf("%s %zu\n", #type, sizeof(type))
#define FIELD(type, field) printf("%s.%s %zu\n", #type, #field, offsetof(type, field))

int main(void)
{
    SIZE(sqz_session_options);
    FIELD(sqz_session_options, backend); FIELD(sqz_session_options, device);
    FIELD(sqz_session_options, precision); FIELD(sqz_session_options, settings);
    FIELD(sqz_session_options, debug); FIELD(sqz_session_options, guard_bytes);
    FIELD(sqz_session_options, unfused); FIELD(sqz_session_options, fault_launch);
    FIELD(sqz_session_options, fault_alloc);
    SIZE(sqz_pipeline_options);
    FIELD(sqz_pipeline_options, task); FIELD(sqz_pipeline_options, max_length);
    FIELD(sqz_pipeline_options, batch_tokens); FIELD(sqz_pipeline_options, top_k);
    FIELD(sqz_pipeline_options, max_answer_length); FIELD(sqz_pipeline_options, pooling);
    FIELD(sqz_pipeline_options, pooling_count); FIELD(sqz_pipeline_options, normalize);
    SIZE(sqz_pipeline_info);
    FIELD(sqz_pipeline_info, task); FIELD(sqz_pipeline_info, max_length);
    FIELD(sqz_pipeline_info, batch_tokens); FIELD(sqz_pipeline_info, top_k);
    FIELD(sqz_pipeline_info, max_answer_length); FIELD(sqz_pipeline_info, dimension);
    FIELD(sqz_pipeline_info, num_labels);
    SIZE(sqz_text);
    FIELD(sqz_text, text); FIELD(sqz_text, text_len); FIELD(sqz_text, pair); FIELD(sqz_text, pair_len);
    SIZE(sqz_token_label);
    FIELD(sqz_token_label, token); FIELD(sqz_token_label, label); FIELD(sqz_token_label, label_name);
    FIELD(sqz_token_label, score); FIELD(sqz_token_label, start); FIELD(sqz_token_label, end);
    SIZE(sqz_mask_candidate);
    FIELD(sqz_mask_candidate, token_id); FIELD(sqz_mask_candidate, token); FIELD(sqz_mask_candidate, score);
    SIZE(sqz_answer);
    FIELD(sqz_answer, task); FIELD(sqz_answer, label); FIELD(sqz_answer, label_name);
    FIELD(sqz_answer, score); FIELD(sqz_answer, probabilities); FIELD(sqz_answer, num_labels);
    FIELD(sqz_answer, label_names); FIELD(sqz_answer, embedding); FIELD(sqz_answer, dimension);
    FIELD(sqz_answer, tokens); FIELD(sqz_answer, n_tokens); FIELD(sqz_answer, answer);
    FIELD(sqz_answer, answer_len); FIELD(sqz_answer, start); FIELD(sqz_answer, end);
    FIELD(sqz_answer, candidates); FIELD(sqz_answer, n_masks); FIELD(sqz_answer, per_mask);
    SIZE(sqz_input);
    FIELD(sqz_input, batch); FIELD(sqz_input, choices); FIELD(sqz_input, seq_len);
    FIELD(sqz_input, input_ids); FIELD(sqz_input, attention_mask); FIELD(sqz_input, token_type_ids);
    SIZE(sqz_output);
    FIELD(sqz_output, name); FIELD(sqz_output, ndim); FIELD(sqz_output, shape); FIELD(sqz_output, data);
    FIELD(sqz_output, type); FIELD(sqz_output, values); FIELD(sqz_output, device_data);
    FIELD(sqz_output, bytes);
    SIZE(sqz_span);
    FIELD(sqz_span, start); FIELD(sqz_span, end);
    SIZE(sqz_encoding);
    FIELD(sqz_encoding, length); FIELD(sqz_encoding, input_ids); FIELD(sqz_encoding, token_type_ids);
    FIELD(sqz_encoding, attention_mask); FIELD(sqz_encoding, offsets); FIELD(sqz_encoding, sequence_ids);
    FIELD(sqz_encoding, truncated);
    SIZE(sqz_tokenizer_info);
    FIELD(sqz_tokenizer_info, vocab_size); FIELD(sqz_tokenizer_info, do_lower_case);
    FIELD(sqz_tokenizer_info, strip_accents); FIELD(sqz_tokenizer_info, tokenize_chinese_chars);
    FIELD(sqz_tokenizer_info, clean_text); FIELD(sqz_tokenizer_info, max_input_chars_per_word);
    FIELD(sqz_tokenizer_info, model_max_length); FIELD(sqz_tokenizer_info, unk_id);
    FIELD(sqz_tokenizer_info, cls_id); FIELD(sqz_tokenizer_info, sep_id); FIELD(sqz_tokenizer_info, pad_id);
    FIELD(sqz_tokenizer_info, mask_id); FIELD(sqz_tokenizer_info, special_token_count);
    return 0;
}
