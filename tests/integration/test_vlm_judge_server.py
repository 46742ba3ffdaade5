"""The VLM client and the `vlm_judge` reward against a REAL OpenAI-compatible server: `transformers serve` on a tiny
random LLaVA built offline (tests/vlm_server.py). The image really reaches the model, the reward is the number
parsed from the model's real answer, gibberish is an error naming the reward (or no score), and a repeated
question does not reach the server again."""

import re
import time

import pytest
import torch
from PIL import Image
from vlm_server import shared_tiny_vlm_server

from rlhf_img.rewards import RewardConfigError, RewardError, build_rewards, score_rewards
from rlhf_img.rewards.tiny_judge import IMAGE_TOKENS
from rlhf_img.rewards.vlm_client import ChatAnswer, VlmClient

pytestmark = pytest.mark.timeout(180)

QUESTION = "Rate the image from 1 to 5."
BLACK, WHITE = Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (255, 255, 255))
IMAGES = torch.stack([torch.zeros(3, 64, 64), torch.ones(3, 64, 64)])  # the same two, as the trainer passes them


@pytest.fixture(scope="session")
def tiny_vlm_server(tmp_path_factory):
    """One `transformers serve` for the session (shared with any other module that asks)."""
    yield from shared_tiny_vlm_server(str(tmp_path_factory.mktemp("tiny_vlm")))


def wait_for_log_count(server, expected: int, seconds: float = 5.0) -> int:
    """uvicorn logs a request just after answering it: wait (briefly) until `expected` lines are there."""
    deadline = time.monotonic() + seconds
    while server.completions_logged() < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.completions_logged()


def test_the_image_reaches_the_model_and_the_answer_is_its_greedy_decoding(tiny_vlm_server):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    client = VlmClient(tiny_vlm_server.base_url, tiny_vlm_server.model, cache=False)
    client.check()
    black, white = client.ask([(BLACK, QUESTION), (WHITE, QUESTION)], max_tokens=8)
    assert isinstance(black, ChatAnswer) and isinstance(white, ChatAnswer)
    assert black.top_logprobs is None  # transformers serve gives no logprobs

    processor = AutoProcessor.from_pretrained(tiny_vlm_server.model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_server.model).eval()
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    for image, answer in ((BLACK, black), (WHITE, white)):
        inputs = processor(text=text, images=image, return_tensors="pt")
        # the server counted the image's 16 patch tokens, expanded from the one <image> the template writes
        assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == IMAGE_TOKENS
        assert answer.prompt_tokens == inputs["input_ids"].shape[1]
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        expected = processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert answer.text == expected  # what the model answers to this image, decoded greedily
    assert black.text != white.text  # and the image changes the answer: it was seen


def test_the_reward_is_the_number_parsed_from_the_real_answer(tiny_vlm_server):
    url, model = tiny_vlm_server.base_url, tiny_vlm_server.model
    kwargs = {
        "base_url": url,
        "model": model,
        "template": "Rate {prompt} drawn in {style} from 0 to 9.",
        "parser": r"([0-9])",
        "scale": 4,
        "max_tokens": 6,
    }
    (judge,) = build_rewards([{"name": "vlm_judge", "label": "tiny_judge", "weight": 0.5, "kwargs": kwargs}])
    assert judge.name == "tiny_judge" and judge.weight == 0.5 and judge.timeout is None
    prompts, styles = ["a red cube", "a cat"], ["ink", "oil"]
    scores = score_rewards([judge], prompts, IMAGES, {"style": styles})
    answers = VlmClient(url, model, cache=False).ask(
        [(BLACK, "Rate a red cube drawn in ink from 0 to 9."), (WHITE, "Rate a cat drawn in oil from 0 to 9.")],
        max_tokens=6,
    )
    expected = [int(answer.text[-1]) / 4 for answer in answers]  # the last digit the model wrote, over the scale
    assert all(answer.text.isdigit() for answer in answers)
    assert scores[:, 0].tolist() == expected


def test_gibberish_through_a_preset_parser_raises_naming_reward_endpoint_and_prompt_or_masks(tiny_vlm_server, caplog):
    url, model = tiny_vlm_server.base_url, tiny_vlm_server.model
    (judge,) = build_rewards([{"name": "vlm_judge", "kwargs": {"base_url": url, "model": model, "max_tokens": 6}}])
    with pytest.raises(RewardError) as info:
        score_rewards([judge], ["a red cube on a blue sphere", "two cats"], IMAGES, {})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"reward 'vlm_judge' raised RuntimeError: vlm_judge: 2 of 2 images got no score from "
        f"{url} (model '{model}'); first, prompt 'a red cube on a blue sphere': the answer did "
        "not parse with unifiedreward_point (expected 'Final Score: <number>'): '"
    )
    assert "raise max_tokens" in message  # the tiny model writes digits until max_tokens

    (masked,) = build_rewards(
        [{"name": "vlm_judge", "kwargs": {"base_url": url, "model": model, "max_tokens": 6, "on_failure": "mask"}}]
    )
    with caplog.at_level("WARNING", logger="rlhf_img.rewards.vlm_judge"):
        scores = score_rewards([masked], ["a red cube on a blue sphere", "two cats"], IMAGES, {})
    assert torch.isnan(scores).all()
    assert len(caplog.records) == 1 and "2 of 2 images got no score" in caplog.records[0].getMessage()


def test_a_repeated_call_is_answered_from_the_cache_without_reaching_the_server(tiny_vlm_server):
    url, model = tiny_vlm_server.base_url, tiny_vlm_server.model
    (judge,) = build_rewards(
        [
            {
                "name": "vlm_judge",
                "kwargs": {
                    "base_url": url,
                    "model": model,
                    "template": "How many? {prompt}",
                    "parser": r"([0-9])",
                    "max_tokens": 4,
                },
            }
        ]
    )
    logged = tiny_vlm_server.completions_logged()
    first = score_rewards([judge], ["a dog", "a fox"], IMAGES, {})
    assert wait_for_log_count(tiny_vlm_server, logged + 2) == logged + 2 and judge.fn.client.requests_sent == 2
    start = time.monotonic()
    again = score_rewards([judge], ["a dog", "a fox"], IMAGES, {})
    assert time.monotonic() - start < 0.5 and torch.equal(first, again)
    time.sleep(0.3)
    assert tiny_vlm_server.completions_logged() == logged + 2 and judge.fn.client.requests_sent == 2


def test_the_check_names_the_served_model_when_another_is_asked(tiny_vlm_server):
    with pytest.raises(
        RewardConfigError,
        match=r"reward 'vlm_judge': .* does not serve model 'unifiedreward'; "
        r"it serves \['.*tiny-llava'\]",
    ):
        build_rewards(
            [{"name": "vlm_judge", "kwargs": {"base_url": tiny_vlm_server.base_url, "model": "unifiedreward"}}]
        )


def test_the_vqa_reward_scores_atoms_with_the_real_servers_answers(tiny_vlm_server):
    """GenEval 2-style atoms asked of the real server: a count atom scores 1 exactly when the model's real answer
    starts with the expected number; the tiny model answers a yes/no question with digits, which is no answer: one
    line naming the question (raise) or no score (mask), never 0."""
    from rlhf_img.eval.vqa.answerers import QUESTION_SUFFIX

    url, model = tiny_vlm_server.base_url, tiny_vlm_server.model
    question = "How many circles are in the image?"
    client = VlmClient(url, model, cache=False)
    replies = client.ask([(BLACK, question + QUESTION_SUFFIX), (WHITE, question + QUESTION_SUFFIX)], max_tokens=8)
    first_numbers = [int(re.match(r"\d+", reply.text).group(0)) for reply in replies]  # the tiny model writes digits
    count_atoms = [
        [{"type": "count", "question": question, "answer": str(number), "subject": "circle", "count": number}]
        for number in (first_numbers[0], first_numbers[0] + 1)
    ]
    (vqa,) = build_rewards([{"name": "vqa", "kwargs": {"answerer": "vlm", "base_url": url, "model": model}}])
    scores = score_rewards([vqa], ["two circles", "two circles"], IMAGES[:1].repeat(2, 1, 1, 1), {"atoms": count_atoms})
    assert scores.flatten().tolist() == [1.0, 0.0]  # the expected number, then one more than it was answered

    yes_no = [[{"type": "object", "question": "Are there any circles in the image?", "subject": "circle"}]] * 2
    with pytest.raises(RewardError, match="Are there any circles in the image"):
        score_rewards([vqa], ["a circle", "a circle"], IMAGES, {"atoms": yes_no})
    (masked,) = build_rewards(
        [{"name": "vqa", "kwargs": {"answerer": "vlm", "base_url": url, "model": model, "on_failure": "mask"}}]
    )
    assert score_rewards([masked], ["a circle", "a circle"], IMAGES, {"atoms": yes_no}).isnan().all()
