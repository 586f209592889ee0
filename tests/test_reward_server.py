"""The reward server: a RemoteReward scores exactly as the reward it serves, from many threads and envs, and every
failure (bad request, failing reward, dead server) is a clear error that names the URL."""

import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import gymnasium as gym
import numpy as np
import pytest

import rlhf_env  # noqa: F401  (registers the envs)
from rlhf_env.rewards import CallableReward, RewardError, load_reward
from rlhf_env.rewards.server import RemoteReward, serve_reward
from rlhf_env.world.tasks import reference_answer


def n_chars(prompts, responses):
    return [float(len(r)) for r in responses]


@pytest.fixture(scope="module")
def gold_server(world_dir):
    with serve_reward("gold", data=str(world_dir)) as server:
        yield server


@pytest.fixture
def texts(world):
    """24 demonstrations (prompts from the world, responses written by its labelers), half replaced by the
    task's reference answer so that gold scores vary."""
    rows = world["demonstrations"]["train"].shuffle(seed=0).select(range(24))
    responses = [" " + reference_answer(t) if i % 2 else r for i, (t, r) in enumerate(zip(rows["task"],
                                                                                         rows["response"]))]
    return list(rows["prompt"]), responses


def post(url: str, body: bytes, path: str = "/score") -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_gold_scores_exactly_as_local_gold(gold_server, world_dir, texts):
    prompts, responses = texts
    remote = load_reward(gold_server.url)
    assert isinstance(remote, RemoteReward) and remote.name == f"remote({gold_server.url})"
    assert remote.info["name"] == "gold" and remote.info["version"] == rlhf_env.__version__
    eos = [i % 5 != 0 for i in range(len(prompts))]
    local = load_reward("gold", data=str(world_dir))(prompts, responses, eos)
    scores = remote(prompts, responses, eos)
    assert scores.dtype == np.float64 and scores.tolist() == local.tolist()  # JSON floats round-trip exactly
    assert len(set(local.tolist())) > 3  # a real spread of scores, not one constant


def test_eos_reaches_the_served_reward(gold_server, world, world_dir):
    row = world["prompts"]["heldout"][0]
    prompt, answer = row["prompt"], " " + reference_answer(row["task"])
    gold, remote = load_reward("gold", data=str(world_dir)), RemoteReward(gold_server.url)
    ended, cut = remote([prompt] * 2, [answer] * 2, [True, False])
    assert ended == gold([prompt], [answer], [True])[0] == 1.0  # the world's own answer, ended: full marks
    assert cut == gold([prompt], [answer], [False])[0] < ended  # cut off at the length limit: no ending credit


def test_concurrent_clients_share_one_model_and_each_get_their_own_scores():
    """The served reward keeps its batch in an attribute across a pause: without the server's lock, one
    client's batch overwrites another's and some get the wrong scores."""
    class Racy:
        def __call__(self, prompts, responses):
            self.batch = responses
            time.sleep(0.005)
            return n_chars(prompts, self.batch)

    rng = np.random.default_rng(0)
    batches = [["x" * int(n) for n in rng.integers(1, 50, size=int(rng.integers(1, 9)))] for _ in range(24)]
    results, errors = {}, []
    with serve_reward(CallableReward(Racy(), name="racy")) as server:
        def client(k):
            remote = RemoteReward(server.url)
            try:
                for i in range(k, len(batches), 6):
                    results[i] = remote([""] * len(batches[i]), batches[i]).tolist()
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert results == {i: n_chars(None, b) for i, b in enumerate(batches)}


def test_a_batch_larger_than_the_servers_limit_is_split_by_the_client():
    with serve_reward(n_chars, max_batch=2) as server:
        responses = ["a", "bb", "ccc", "dddd", "eeeee"]
        assert RemoteReward(server.url)([""] * 5, responses).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
        status, reply = post(server.url, json.dumps({"prompts": ["", "", ""], "responses": ["a", "b", "c"]}).encode())
        assert status == 400 and reply["error"] == "3 responses in one request; this server takes at most 2"


@pytest.mark.parametrize("body, message", [
    (b"{not json", "the body is not JSON"),
    (b"[1, 2]", "must be a JSON object, not list"),
    ({"prompts": ["a"]}, r"missing field\(s\) \['responses'\]"),
    ({"prompts": "a", "responses": ["b"]}, "prompts must be a list of str"),
    ({"prompts": ["a"], "responses": [3]}, "responses must be a list of str"),
    ({"prompts": ["a"], "responses": ["b"], "eos": [1]}, "eos must be a list of bool"),
    ({"prompts": ["a", "b"], "responses": ["c"]}, "2 prompts, 1 responses and 1 eos flags"),
    ({"prompts": ["a"], "responses": ["b"], "eos": [True, False]}, "1 prompts, 1 responses and 2 eos flags"),
])
def test_a_bad_request_gets_400_with_what_is_wrong_and_the_server_keeps_serving(body, message):
    with serve_reward(n_chars) as server:
        status, reply = post(server.url, body if isinstance(body, bytes) else json.dumps(body).encode())
        assert status == 400 and re.search(message, reply["error"]), reply
        good = json.dumps({"prompts": ["p"], "responses": ["abc"]}).encode()
        assert post(server.url, good) == (200, {"scores": [3.0]})


def test_a_failing_reward_is_a_clear_client_error_and_the_server_answers_afterwards():
    def fussy(prompts, responses):
        if "boom" in responses:
            raise ValueError("cannot score 'boom'")
        return [float("nan")] * len(responses) if "nan" in responses else n_chars(prompts, responses)

    with serve_reward(fussy) as server:
        remote = load_reward(server.url)
        with pytest.raises(RewardError, match=rf"reward server at {server.url} answered 500 to /score: "
                                              r"ValueError: cannot score 'boom'"):
            remote(["p", "p"], ["ok", "boom"])
        with pytest.raises(RewardError, match=r"answered 500 .*fussy returned 1 non-finite score"):
            remote(["p"], ["nan"])
        assert remote(["p", "p"], ["ok", "fine"]).tolist() == [2.0, 4.0]
        status, reply = post(server.url, b"{}", path="/nowhere")
        assert status == 404 and "POST /score" in reply["error"]


def test_a_dead_server_is_a_clear_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RewardError, match=rf"cannot reach the reward server at {url} .*Connection refused") as error:
        load_reward(url, retries=0)
    assert error.value.__suppress_context__  # no urllib traceback chained under it
    with serve_reward(n_chars) as server:
        remote = RemoteReward(server.url, retries=1)
    with pytest.raises(RewardError, match=rf"cannot reach the reward server at {server.url} "):  # closed since
        remote(["p"], ["r"])


def test_the_bandit_pays_the_served_reward_exactly_as_the_local_one(gold_server, world, tiny_policy_dir, world_dir,
                                                                      tokenizer):
    kwargs = dict(reference=str(tiny_policy_dir), data=str(world_dir), prompts="ppo", max_prompt_tokens=64,
                  max_new_tokens=24, kl_coef=0.1)
    envs = {"local": gym.make("InstructBandit-v0", reward="gold", **kwargs),
            "remote": gym.make("InstructBandit-v0", reward=gold_server.url, **kwargs)}
    assert isinstance(envs["remote"].unwrapped.reward, RemoteReward)
    tasks = dict(zip(world["prompts"]["ppo"]["prompt"], world["prompts"]["ppo"]["task"]))
    out = {name: [] for name in envs}
    for seed in range(6):
        for name, env in envs.items():
            _, info = env.reset(seed=seed)
            answer = " " + reference_answer(tasks[info["prompt"]]) if seed % 2 else " i do not know ."
            ids = tokenizer(answer)["input_ids"] + [tokenizer.eos_token_id]
            response_ids = np.full(24, tokenizer.pad_token_id, dtype=np.int64)
            response_ids[:len(ids)] = ids
            _, reward, _, _, step_info = env.step({"response_ids": response_ids,
                                                   "logprobs": np.full(24, -1.0, dtype=np.float32)})
            out[name].append((info["prompt"], reward, step_info["rm_score"], step_info["eos"]))
    assert out["remote"] == out["local"]
    assert all(eos for *_, eos in out["local"]) and len({score for _, _, score, _ in out["local"]}) > 1


def test_the_command_line_prints_the_url_and_serves_until_stopped(world_dir):
    command = [sys.executable, "-m", "rlhf_env.cli", "serve-reward", "--reward", "gold", "--data", str(world_dir),
               "--port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe buffers: the line must flush
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert select.select([process.stdout], [], [], 120)[0], "no line on stdout"
        line = process.stdout.readline()
        assert line.startswith("serving gold at http://127.0.0.1:"), line
        assert RemoteReward(line.split()[-1]).info["spec"] == "gold"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_importing_the_server_does_not_import_torch():
    code = "import sys, rlhf_env.rewards.server; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ppo_pays_the_served_reward_exactly_as_the_local_one(tiny_policy_dir, world_dir, tmp_path):
    """What every data-parallel rank does with ``reward=URL``: its env scores through the one server."""
    from agents.ppo import PPOAgent, PPOConfig

    rewards = {}
    with serve_reward(n_chars) as server:
        for name, reward in (("local", n_chars), ("remote", server.url)):
            agent = PPOAgent(PPOConfig(policy=str(tiny_policy_dir), reward=reward, out=str(tmp_path / name),
                                       data=str(world_dir), batch_size=8, minibatch_size=4, max_new_tokens=8,
                                       eval_every=0, save_every=0, missing_eos_penalty=None))
            assert isinstance(agent.env.unwrapped.reward, RemoteReward) == (name == "remote")
            rewards[name] = agent.rollout(agent.env.reset(seed=0)[0])["env_rewards"]
    assert rewards["remote"].tolist() == rewards["local"].tolist() and rewards["local"].std() > 0


def test_a_served_rewards_label_and_transform_are_chosen_where_it_is_served():
    from agents.ppo import PPOConfig

    with pytest.raises(ValueError, match="label and transform are chosen where it is served"):
        PPOConfig(reward="http://127.0.0.1:8765", reward_label=1)
    assert PPOConfig(reward="http://127.0.0.1:8765").reward_label == 0  # the defaults pass
