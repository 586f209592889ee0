"""Every kind of reward `load_reward` accepts, each one batched call (prompts, responses) -> scores."""

from rlhf_env.models import DATA_DIR
from rlhf_env.rewards import EnsembleReward, NormalizedReward, load_reward
from rlhf_env.world.build import load_split
from rlhf_env.world.tasks import reference_answer

prompts = ["Q: what is 3 plus 4 ?\nA:", "Q: sort : fig apple .\nA:"]
responses = [" 3 plus 4 is 7 .", " apple fig . i hope this helps ."]

# 1. The bundled learned reward models (normalised so that SFT samples score mean 0, std 1).
rm = load_reward("rm")                        # or "rm-scalar", InstructGPT's scalar-head design
print(rm(prompts, responses))

# 2. Any Hugging Face sequence classifier, by local path or hub id, with its own tokenizer:
#    text is retokenised, so it need not share the policy's tokenizer.
#    clf = load_reward("path/to/classifier", label=1, transform="log_softmax", device="cpu")

# 3. Any Python function with the same signature.
brevity = load_reward(lambda prompts, responses: [-len(r.split()) for r in responses])
print(brevity(prompts, responses))

# 4. The gold grader, as an oracle. It looks each prompt's task up in the world's datasets;
#    pass tasks={prompt: task_json} for prompts of your own.
heldout = load_split(DATA_DIR, "prompts", "heldout").select(range(2))
answers = [" " + reference_answer(task) for task in heldout["task"]]  # the world's own answers: gold 1.0
gold = load_reward("gold")
print(gold(list(heldout["prompt"]), answers), gold(list(heldout["prompt"]), [" no idea .", " fig ."]))

# 5. An ensemble: mean, min, or mean - k * std (a mitigation for over-optimisation).
cautious = EnsembleReward([load_reward("rm"), load_reward("rm-scalar")], mode="mean_minus_std", k=1.0)
print(cautious(prompts, responses))

# 6. Any of them rescaled so that some policy's samples score N(0, 1), the scale the bundled RMs have.
print(NormalizedReward.fit(brevity, prompts, responses)(prompts, responses))  # [ 1. -1.]
