"""The TRL objective keys that rlhf_img/trl_keys.py marks `applies` do run on images: each loss type, the
importance-sampling level, clipping, off-policy masking, the entropy mask and the (adaptive) entropy bonus, all
fed by the family scorer's log-probs and entropies. Two steps each on the tiny random checkpoint."""

import math

import pytest
from conftest import grpo_args
from datasets import Dataset

from rlhf_img import ImageGRPOTrainer, load_policy


def brightness(prompts, images, **kwargs):
    return images.mean(dim=(1, 2, 3)).tolist()


CASES = {  # case -> (recipe keys, a metric the keys make TRL log)
    "grpo-sequence-level-two-sided-clip": (
        dict(
            loss_type="grpo",
            importance_sampling_level="sequence",
            epsilon=0.1,
            epsilon_high=0.28,
            delta=1.5,
            num_iterations=2,
        ),
        "clip_ratio/region_mean",
    ),
    "dapo-off-policy-mask-entropy-mask-adaptive-entropy": (
        dict(
            loss_type="dapo",
            off_policy_mask_threshold=0.0,
            top_entropy_quantile=0.5,
            use_adaptive_entropy=True,
            entropy_coef=0.01,
            entropy_coef_delta=0.01,
            entropy_coef_min=0.0,
            entropy_coef_max=1.0,
            entropy_target=1e6,
        ),
        "entropy_coef",
    ),
    "sapo": (dict(loss_type="sapo", sapo_temperature_pos=0.9, sapo_temperature_neg=1.1), "entropy"),
    "vespo": (
        dict(loss_type="vespo", vespo_k_pos=1.5, vespo_lambda_pos=2.5, vespo_k_neg=2.5, vespo_lambda_neg=1.5),
        "vespo/phi_seq_mean",
    ),
    "cispo": (dict(loss_type="cispo", epsilon_high=4.0), "cispo_clip_ratio"),
    "luspo": (dict(loss_type="luspo", importance_sampling_level="sequence"), "clip_ratio/region_mean"),
    "bnpo": (dict(loss_type="bnpo"), "clip_ratio/region_mean"),
    "dr_grpo": (dict(loss_type="dr_grpo"), "clip_ratio/region_mean"),
    "kl-without-bias-correction": (dict(beta=0.1, use_bias_correction_kl=False), "kl"),
}


@pytest.fixture(scope="module")
def prompts() -> Dataset:
    return Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(8)]})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_trl_objective_keys_train_on_images_and_log_their_metric(tmp_path, tiny_checkpoint, prompts, case):
    keys, metric = CASES[case]
    policy = load_policy(tiny_checkpoint, "causal_vq")
    args = grpo_args(tmp_path, **{"per_device_train_batch_size": 8, "learning_rate": 1e-3, **keys})
    trainer = ImageGRPOTrainer(policy, args, prompts, reward_funcs=[brightness])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(math.isfinite(entry["loss"]) for entry in logged)
    assert all(metric in entry and entry[metric] is not None for entry in logged), (metric, logged[-1])
    assert any(entry["grad_norm"] > 0 for entry in logged)
    if keys.get("use_adaptive_entropy"):  # image-code entropy is below the target: the bonus grows by delta a step
        assert [round(entry["entropy_coef"], 6) for entry in logged] == [0.02, 0.03]


def test_shuffle_dataset_false_keeps_the_prompt_files_order(tmp_path, tiny_checkpoint, prompts):
    policy = load_policy(tiny_checkpoint, "causal_vq")
    args = grpo_args(tmp_path, per_device_train_batch_size=8, shuffle_dataset=False)
    trainer = ImageGRPOTrainer(policy, args, prompts, reward_funcs=[brightness])
    assert list(trainer._get_train_sampler())[:8] == [0, 0, 0, 0, 1, 1, 1, 1]  # num_generations 4, in file order
