"""A tiny Llama chat model whose greedy reply to any prompt is one scripted text: a real transformers model and
tokenizer saved like a checkpoint and loaded by clipdpo.engines.HFEngine, with its weights set by hand so that
a test of an LLM path can assert exact outcomes instead of an untrained model's noise.

How: every layer's attention and MLP output projections are zero, so each position's final hidden state is its
own token's embedding (after the final RMSNorm), and the next token depends on the current one only. The
embedding of each token of the script is its own basis vector, which the LM head maps to the script's next
token: a bigram chain that starts at the chat template's last token (`<|assistant|>`) and ends with </s>.
Hence every token of the script must be distinct, and its characters in the tiny tokenizer's alphabet
(lower case: the demo corpus's; both checked).
"""

from __future__ import annotations

ASSISTANT = "<|assistant|>"
TEMPLATE = (
    "{% for m in messages %}USER: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)
LOGIT = 10.0  # the next token's logit is LOGIT * sqrt(hidden) (80 at 64), every other token's 0: greedy or
# sampled at any usual temperature, the script is what comes out


def build_scripted_llm(path: str, reply: str, hidden: int = 64) -> str:
    """Save at `path` a LlamaForCausalLM + tokenizer (the demo's tiny byte-level BPE with this chat template)
    that answers every chat prompt with `reply`; returns `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from clipdpo.demo.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([ASSISTANT], special_tokens=True)
    tokenizer.chat_template = TEMPLATE
    script = tokenizer.encode(reply, add_special_tokens=False)
    if tokenizer.decode(script).strip() != reply:
        raise ValueError(f"reply {reply!r} does not survive the tokenizer: {tokenizer.decode(script)!r}")
    chain = [tokenizer.convert_tokens_to_ids(ASSISTANT), *script, tokenizer.eos_token_id]
    sources = chain[:-1]
    if len(set(sources)) != len(sources) or len(sources) > hidden:
        raise ValueError(
            f"reply {reply!r}: tokens {tokenizer.convert_ids_to_tokens(script)} must be distinct and "
            f"at most {hidden - 1} (a bigram script)"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for basis, (token, following) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[token, basis] = 1.0
            model.lm_head.weight[following, basis] = LOGIT
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
