"""LLaVA-1.5's conversation template and special tokens, for tokenizers built from configs.

The built-in demo's tiny LLaVA and any test model use it so that prompts take the shape a real LLaVA-1.5
checkpoint's processor gives them ("USER: <image>\n... ASSISTANT: ...</s>").
"""

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% else %}ASSISTANT: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{{ m['content'][0]['text'] }}{% endif %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
