"""The bundled models from Python: sample a response with its log-probs, and grade it with the gold grader."""

from rlhf_env.models import load_policy
from rlhf_env.sampling import sample
from rlhf_env.world import grade

model, tokenizer = load_policy("sft")             # or "sft-large", a checkpoint dir, or a hub id
out = sample(model, tokenizer, ["Q: what is 3 plus 4 ?\nA:"], max_new_tokens=16)
print(out.texts, out.logprobs)                    # responses and per-token log-probs

print(grade({"family": "arithmetic", "spec": {"a": 3, "b": 4, "op": "plus"}}, out.texts[0]))
