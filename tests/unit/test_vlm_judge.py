"""The `vlm_judge` reward's pure parts: presets and parsers turn answer texts into numbers (never a silent 0),
P(yes) from top logprobs, and bad kwargs fail at build time with one line naming the key. No server involved."""

import math

import pytest

from rlhf_img.rewards import REWARD_REGISTRY, RewardConfigError
from rlhf_img.rewards.vlm_client import ChatAnswer, VlmClient, backoff_seconds, yes_probability
from rlhf_img.rewards.vlm_judge import PRESETS, VlmJudgeReward, parse_acs, parse_yes_no

OFFLINE = {"base_url": "http://127.0.0.1:9/v1", "model": "judge", "health_check": False}  # never contacted


def judge(**kwargs) -> VlmJudgeReward:
    return VlmJudgeReward(**{**OFFLINE, **kwargs})


def answer(text: str, top_logprobs=None) -> ChatAnswer:
    return ChatAnswer(text=text, top_logprobs=top_logprobs)


def test_vlm_judge_is_a_registered_reward_that_bounds_its_own_time():
    assert REWARD_REGISTRY["vlm_judge"] is VlmJudgeReward
    assert VlmJudgeReward.handles_timeout


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Final Score: 4", 0.8),
        ("The image shows a cat.\nFinal Score:3.5", 0.7),
        ("Final Score: 2 ... on reflection, Final Score: 5", 1.0),  # the verdict comes last
        ("I would give it a four.", None),
        ("", None),
    ],
)
def test_unifiedreward_point_reads_the_last_final_score_over_5(text, expected):
    assert judge(template="unifiedreward_point").score(answer(text)) == expected


def test_unifiedreward2_acs_is_the_mean_of_its_three_scores_over_5_and_needs_all_three():
    text = "Alignment Score (1-5): 2.6947\nCoherence Score (1-5): 2.3715\nStyle Score (1-5): 2.8025"
    assert judge(template="unifiedreward2_acs").score(answer(text)) == pytest.approx((2.6947 + 2.3715 + 2.8025) / 15)
    assert parse_acs("alignment score: 4\ncoherence score: 5\nstyle score: 3") == 4.0
    assert parse_acs("Alignment Score (1-5): 4\nCoherence Score (1-5): 5") is None


def test_score_tag_reads_the_tag():
    assert judge(template="score_tag").score(answer("<Thought>fine</Thought><Score>4</Score>")) == 0.8
    assert judge(template="score_tag").score(answer("Score: 4")) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", 1.0),
        ("no.", 0.0),
        ("  YES, it does", 1.0),
        ("**No**", 0.0),
        ("Yesterday", None),
        ("6666", None),
        ("Maybe", None),
    ],
)
def test_yes_no_text_reads_the_first_word(text, expected):
    assert parse_yes_no(text) == expected


def test_yes_probability_from_openai_top_logprobs():
    first = {"Yes": math.log(0.6), " yes": math.log(0.1), "No": math.log(0.1), "The": math.log(0.2)}
    assert yes_probability(answer("Yes", [first, {"!": 0.0}])) == pytest.approx(0.7 / 0.8)
    assert yes_probability(answer("Yes", [{"Yes": 0.0}])) == 1.0  # "no" below the listed candidates: P = 0
    assert yes_probability(answer("The", [{"The": 0.0}])) is None
    assert yes_probability(answer("Yes", None)) is None


def test_yes_no_mode_prefers_logprobs_and_falls_back_to_the_text():
    reward = judge(template="yes_no")
    assert reward.mode == "yes_no" and reward.top_logprobs == 5
    assert reward.score(answer("No", [{"Yes": math.log(0.25), "No": math.log(0.75)}])) == pytest.approx(0.25)
    assert reward.score(answer("No", None)) == 0.0
    assert reward.score(answer("Unclear", None)) is None


def test_a_custom_regex_parser_and_scale():
    reward = judge(template="Rate {prompt} in {style}, 0-10.", parser=r"(\d+)/10", scale=10)
    assert reward.score(answer("I say 7/10")) == 0.7
    assert reward.question(1, "a cat", {"style": ["ink", "oil"]}) == "Rate a cat in oil, 0-10."


def test_a_template_placeholder_that_is_no_column_raises_naming_it():
    reward = judge(template="Rate {prompt} in {style}.", parser=r"(\d)")
    with pytest.raises(RuntimeError, match=r"template's \{style\} is not a dataset column \(columns: \['other'\]\)"):
        reward.question(0, "a cat", {"other": ["x"]})


def test_every_preset_asks_for_the_prompt():
    for name, preset in PRESETS.items():
        assert "{prompt}" in preset.template, name
        assert judge(template=name).question(0, "a red cube", {}).count("a red cube") == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"template": "unifiedrewad_point"}, "is no preset .* and has no \\{prompt\\} placeholder"),
        ({"template": "Rate {prompt}"}, "a custom 'template' needs a 'parser'"),
        ({"template": "Rate {0}", "parser": "(x)"}, "placeholders must be named"),
        ({"template": "Rate {prompt", "parser": "(x)"}, "not a valid format string"),
        ({"parser": "(a)(b)"}, "must have exactly one group"),
        ({"parser": "([0-9]"}, "not a valid regex"),
        ({"mode": "scores"}, "'mode' must be 'score' or 'yes_no'"),
        ({"template": "yes_no", "parser": "score_tag"}, "mode 'yes_no' reads yes/no itself"),
        ({"template": "yes_no", "scale": 5}, "'scale' applies to mode 'score'"),
        ({"scale": 0}, "'scale' must be a non-zero number"),
        ({"on_failure": "skip"}, "'on_failure' must be 'raise' or 'mask'"),
        ({"max_tokens": 0}, "'max_tokens' must be an int >= 1"),
        ({"top_logprobs": 21}, "'top_logprobs' must be an int in 0..20"),
        ({"image_size": 0}, "'image_size' must be a positive int"),
        ({"base_url": "127.0.0.1:8000/v1"}, "'base_url' must look like http://"),
        ({"timeout": 0}, "'timeout' must be a positive number"),
        ({"retries": -1}, "'retries' must be an int >= 0"),
        ({"max_concurrency": 0}, "'max_concurrency' must be an int >= 1"),
    ],
)
def test_bad_kwargs_fail_at_build_time_with_one_line(kwargs, message):
    with pytest.raises(RewardConfigError, match=message) as info:
        judge(**kwargs)
    assert "\n" not in str(info.value) and str(info.value).startswith("reward 'vlm_judge': ")


def test_backoff_doubles_and_is_capped():
    assert [backoff_seconds(retry) for retry in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_the_cache_key_covers_everything_that_changes_the_answer():
    client = VlmClient("http://127.0.0.1:9/v1", "judge")
    base = client._cache_key(b"png", "q", None, 16, 0)
    assert base == client._cache_key(b"png", "q", None, 16, 0)
    assert (
        len(
            {
                base,
                client._cache_key(b"PNG", "q", None, 16, 0),
                client._cache_key(b"png", "Q", None, 16, 0),
                client._cache_key(b"png", "q", "sys", 16, 0),
                client._cache_key(b"png", "q", None, 17, 0),
                client._cache_key(b"png", "q", None, 16, 5),
                VlmClient("http://127.0.0.1:9/v1", "judge", temperature=1.0)._cache_key(b"png", "q", None, 16, 0),
                VlmClient("http://127.0.0.1:9/v1", "other")._cache_key(b"png", "q", None, 16, 0),
            }
        )
        == 8
    )


def test_without_the_openai_sdk_the_reward_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "openai", None)  # `import openai` now raises ImportError
    with pytest.raises(
        RewardConfigError,
        match=r"^reward 'vlm_judge': the VLM client needs the OpenAI SDK: "
        r"pip install 'rlhf-img\[judge\]'$",
    ):
        judge()
