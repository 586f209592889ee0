from rlhf_env.tokenizer import EOS, PAD


def test_tokenizer_round_trips_world_text(world, tokenizer):
    texts = world["pretrain"]["text"][:50] + world["prompts"]["heldout"]["prompt"][:50] + ["émoji ✓ 123\n"]
    for text in texts:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_pad_and_eos_are_distinct_and_padding_is_left(tokenizer):
    assert tokenizer.pad_token == PAD and tokenizer.eos_token == EOS
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    batch = tokenizer(["a", "a b c d"], padding=True)
    assert batch["input_ids"][0][0] == tokenizer.pad_token_id and batch["attention_mask"][0][0] == 0


def test_digits_are_single_tokens(tokenizer):
    tokens = tokenizer.tokenize("12 plus 305")
    assert [t for t in tokens if any(c.isdigit() for c in t)] == ["1", "2", "3", "0", "5"]
