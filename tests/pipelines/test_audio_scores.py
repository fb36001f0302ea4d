"""The generation scores (IS, modified IS, AM, FID) on distributions whose value is known, the
word classifier (save/load, batching, length handling), and train_word_classifier ->
score_audio / generate_audio(score=...) on synthetic words, with one command-line test of
train-word-classifier and of score-audio."""
import itertools
import json
import math
import shutil
from pathlib import Path

import pytest
import scipy.linalg
import torch

from mambaseq.mamba_audio.classifier import WordClassifier, WordClassifierConfig
from mambaseq.mamba_audio.datasets import load_word_clips, words_from_folders
from mambaseq.mamba_audio.gen_scores import (am_score, feature_stats, frechet_distance,
                                             generation_scores, inception_score,
                                             modified_inception_score)
from mambaseq.mamba_audio.io import save_audio
from mambaseq.mamba_audio.model import AudioLM
from mambaseq.mamba_audio.synth import Voice, speech_like, write_demo_corpus
from mambaseq.pipelines import cli
from mambaseq.pipelines.audio import (GenerateAudioConfig, TrainAudioConfig, generate_audio,
                                      train_audio)
from mambaseq.pipelines.training import ConfigError
from mambaseq.pipelines.words import (ScoreAudioConfig, TrainWordClassifierConfig,
                                      score_audio, train_word_classifier)


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _random_probs(n, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, k, generator=gen, dtype=torch.float64), -1)


@pytest.mark.parametrize("k", [2, 10])
def test_inception_score_of_confident_balanced_predictions_is_the_number_of_classes(k):
    confident = torch.eye(k, dtype=torch.float64).repeat(3, 1)                 # (3k, k)
    assert inception_score(confident) == pytest.approx(k)
    assert inception_score(torch.full((5, k), 1.0 / k)) == pytest.approx(1.0)
    one_word = torch.zeros(6, k, dtype=torch.float64)
    one_word[:, 0] = 1
    assert inception_score(one_word) == pytest.approx(1.0)


def test_inception_score_matches_its_definition():
    p = _random_probs(7, 4)
    marginal = p.mean(0)
    kl = [float((row * (row / marginal).log()).sum()) for row in p]
    assert inception_score(p) == pytest.approx(math.exp(sum(kl) / len(kl)), rel=1e-12)


def test_modified_inception_score_closed_form_and_pairwise_definition():
    # Half the clips (0.9, 0.1), half (0.1, 0.9): half the ordered pairs differ, each by
    # KL = 0.8 ln 9, so mIS = exp(0.4 ln 9) = 9 ** 0.4.
    p = torch.tensor([[0.9, 0.1], [0.1, 0.9]], dtype=torch.float64).repeat(4, 1)
    assert modified_inception_score(p) == pytest.approx(9 ** 0.4, rel=1e-12)
    assert modified_inception_score(torch.full((5, 3), 1 / 3)) == pytest.approx(1.0)
    q = _random_probs(6, 5, seed=1)
    kl = [float((q[i] * (q[i] / q[j]).log()).sum())
          for i, j in itertools.product(range(len(q)), repeat=2)]
    assert modified_inception_score(q) == pytest.approx(math.exp(sum(kl) / len(kl)), rel=1e-10)


def test_am_score_is_zero_at_best_and_matches_its_definition():
    k = 4
    confident = torch.eye(k, dtype=torch.float64).repeat(2, 1)
    uniform = torch.full((k,), 1.0 / k, dtype=torch.float64)
    assert am_score(confident, uniform) == pytest.approx(0.0, abs=1e-9)
    p, ref = _random_probs(9, k, seed=2), _random_probs(1, k, seed=3)[0]
    marginal = p.mean(0)
    expected = float((ref * (ref / marginal).log()).sum()
                     - (p * p.log()).sum(-1).mean())
    assert am_score(p, ref) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="3 classes"):
        am_score(_random_probs(2, 3), uniform)


def test_scores_reject_logits_and_empty_input():
    with pytest.raises(ValueError, match="rows must sum to 1"):
        inception_score(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        modified_inception_score(torch.zeros(0, 3))


def test_frechet_distance_of_identical_sets_is_zero_even_below_full_rank():
    gen = torch.Generator().manual_seed(0)
    for n, f in ((200, 8), (5, 16)):                     # (5, 16): a singular covariance
        feats = torch.randn(n, f, generator=gen, dtype=torch.float64)
        mean, cov = feature_stats(feats)
        assert frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_known_gaussians_and_scipy_sqrtm():
    f = 6
    shift = torch.arange(f, dtype=torch.float64)
    eye = torch.eye(f, dtype=torch.float64)
    # N(0, I) vs N(shift, 4 I): |shift|^2 + tr(I + 4 I - 2 * 2 I) = |shift|^2 + f
    assert frechet_distance(torch.zeros(f), eye, shift, 4 * eye) == pytest.approx(
        float(shift @ shift) + f, rel=1e-10)
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(f, f, generator=gen, dtype=torch.float64) for _ in range(2))
    cov_a, cov_b = a @ a.T + 0.1 * eye, b @ b.T + 0.1 * eye
    root = scipy.linalg.sqrtm(cov_a.numpy() @ cov_b.numpy()).real
    expected = float((cov_a + cov_b).trace()) - 2 * root.trace() + float(shift @ shift)
    assert frechet_distance(shift, cov_a, torch.zeros(f), cov_b) == pytest.approx(expected,
                                                                                 rel=1e-8)


def test_generation_scores_of_the_reference_itself():
    """Clips whose predictions and features are the reference's: FID 0, AM = mean entropy."""
    probs = _random_probs(50, 3, seed=4)
    feats = torch.randn(50, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mean, cov = feature_stats(feats)
    scores = generation_scores(probs, feats, probs.mean(0), mean, cov)
    assert scores["clips"] == 50 and scores["fid"] == pytest.approx(0.0, abs=1e-8)
    assert scores["am_score"] == pytest.approx(float(-(probs * probs.log()).sum(-1).mean()))
    assert 1 < scores["inception_score"] < 3 and scores["modified_inception_score"] > 1


def test_classifier_save_load_batching_and_length():
    torch.manual_seed(0)
    clf = WordClassifier(WordClassifierConfig(labels=["no", "yes", "up"], sample_rate=8000,
                                              clip_seconds=0.5, n_mels=20, channels=[4, 8],
                                              n_features=6)).eval()
    wavs = torch.randn(5, 4000)
    clf.fit_reference(wavs)
    assert clf.ref_feature_cov.shape == (6, 6) and clf.ref_class_marginal.sum() == pytest.approx(1)
    probs, feats = clf.predict(wavs, batch_size=2)
    assert probs.shape == (5, 3) and feats.shape == (5, 6)
    one_by_one = torch.cat([clf.predict(w[None])[0] for w in wavs])           # batch norm in eval
    torch.testing.assert_close(probs, one_by_one, rtol=1e-5, atol=1e-6)
    # longer input is cut to clip_samples, shorter zero-padded
    torch.testing.assert_close(clf.predict(torch.cat([wavs, wavs], -1))[0], probs)
    padded = torch.nn.functional.pad(wavs[:, :3000], (0, 1000))
    torch.testing.assert_close(clf.predict(wavs[:, :3000])[0], clf.predict(padded)[0])
    # the level of a clip does not matter (per-clip standardised log-mel)
    torch.testing.assert_close(clf.predict(3 * wavs)[0], probs, rtol=1e-4, atol=1e-5)


def test_classifier_round_trips_with_its_reference(tmp_path):
    torch.manual_seed(0)
    clf = WordClassifier(WordClassifierConfig(labels=["a", "b"], sample_rate=8000,
                                              clip_seconds=0.25, channels=[4], n_features=5))
    clf.fit_reference(torch.randn(8, 2000))
    clf.save_pretrained(tmp_path / "clf")
    same = WordClassifier.from_pretrained(tmp_path / "clf")
    assert same.labels == ["a", "b"] and same.clip_samples == 2000
    for name in ("ref_class_marginal", "ref_feature_mean", "ref_feature_cov"):
        torch.testing.assert_close(getattr(same, name), getattr(clf, name))
    wav = torch.randn(3, 2000)
    torch.testing.assert_close(same.predict(wav)[0], clf.eval().predict(wav)[0])
    with pytest.raises(ValueError, match="at least 2 labels"):
        WordClassifierConfig(labels=["only"])


def _write_words(root, rate=16000, seconds=0.25, speakers=4, takes=3):
    """Two 'words' in SC's layout, word/{speaker}_nohash_{take}.wav: speech-like clips and
    white noise, plus an _unknown_ folder that is skipped."""
    n = int(rate * seconds)
    for s, t in itertools.product(range(speakers), range(takes)):
        spk = f"{s:08x}"
        seed = 100 * s + t
        save_audio(root / "speech" / f"{spk}_nohash_{t}.wav",
                   speech_like(seconds, rate, Voice(100.0 + 30 * s), seed=seed), rate)
        noise = torch.randn(n, generator=torch.Generator().manual_seed(seed))
        save_audio(root / "noise" / f"{spk}_nohash_{t}.wav", 0.5 * noise / noise.abs().max(),
                   rate)
    save_audio(root / "_unknown_" / f"tree_{0:08x}_nohash_0.wav", torch.zeros(n), rate)


def _last_json(text):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


REGEX = r"(?P<speaker>[0-9a-f]{8})_nohash_\d+\.wav"
TINY_WORDS = dict(clip_seconds=0.25, steps=40, batch_size=8, eval_every=20, log_every=10,
                  warmup_steps=5, device="cpu")


@pytest.fixture(scope="module")
def word_run(tmp_path_factory, one_thread_module):
    """A word classifier trained on speakers 0-2 of ``_write_words`` (speaker 3 held out):
    (data folder, result)."""
    root = tmp_path_factory.mktemp("words")
    data = root / "words"
    _write_words(data)
    result = train_word_classifier(TrainWordClassifierConfig(
        data=str(data), out=str(root / "clf"), speaker_regex=REGEX, test_speakers="00000003",
        val_fraction=0.34, **TINY_WORDS))
    return data, result


def test_train_word_classifier_then_score_generated_clips(word_run, tmp_path):
    data, result = word_run
    assert result.words == ["noise", "speech"] and result.chance == 0.5
    assert result.test_clips == 6                                 # speaker 3: 2 words x 3 takes
    assert result.test_accuracy >= 5 / 6                          # noise vs speech is easy
    real = result.real_test
    assert 1 <= real["inception_score"] <= 2 and real["modified_inception_score"] >= 1
    assert real["am_score"] >= 0 and real["fid"] >= 0
    assert json.loads((result.out / "scores.json").read_text()) == result.report()
    clf = WordClassifier.from_pretrained(result.model_dir)
    assert clf.labels == ["noise", "speech"]

    # score_audio on the same held-out speaker: the same figures, plus groups of 3 clips
    again = score_audio(ScoreAudioConfig(classifier=str(result.model_dir), data=str(data),
                                         subset="test", speaker_regex=REGEX,
                                         test_speakers="00000003", group_size=3)).scores
    assert again["accuracy"] == pytest.approx(result.test_accuracy, abs=1e-4)
    assert again["fid"] == pytest.approx(real["fid"], rel=1e-6)
    assert again["groups"]["count"] == 2 and again["groups"]["size"] == 3
    assert again["groups"]["fid_mean"] >= 0 and again["groups"]["fid_std"] >= 0
    with pytest.raises(ValueError, match="group size 1 must be between 2"):
        score_audio(ScoreAudioConfig(classifier=str(result.model_dir), data=str(data),
                                     speaker_regex=REGEX, group_size=1))

    lm_dir = tmp_path / "lm"
    torch.manual_seed(0)
    AudioLM.from_preset("tiny", sample_rate=8000).save_pretrained(lm_dir)   # resampled to 16k
    scores = generate_audio(GenerateAudioConfig(model=str(lm_dir), out=str(tmp_path / "gen"),
                                                n=3, seconds=0.02,
                                                score=str(result.model_dir))).scores
    assert scores["clips"] == 3 and 1 <= scores["inception_score"] <= 2
    assert set(scores["word_shares"]) == {"noise", "speech"}
    assert sum(scores["word_shares"].values()) == pytest.approx(1)
    with pytest.raises(TypeError, match="not a WordClassifier"):
        generate_audio(GenerateAudioConfig(model=str(lm_dir), out=str(tmp_path / "gen"),
                                           score=str(lm_dir)))


def test_score_audio_test_subset_is_the_classifier_runs_own_split(word_run, tmp_path):
    """A speaker added to the folder after training, and named held out now, is not the
    classifier's test side: subset test scores the files of the run's split.json."""
    data, result = word_run
    grown = tmp_path / "words"
    shutil.copytree(data, grown)
    split = json.loads((result.out / "split.json").read_text())
    moved = {side: [str(grown / Path(f).relative_to(data)) for f in files]
             for side, files in split.items()}
    run = tmp_path / "run"                       # the run folder, moved with its data
    shutil.copytree(result.model_dir, run / "model")
    (run / "split.json").write_text(json.dumps(moved))
    for t in range(3):
        save_audio(grown / "speech" / f"{4:08x}_nohash_{t}.wav",
                   speech_like(0.25, 16000, Voice(260.0), seed=t), 16000)
    scored = score_audio(ScoreAudioConfig(classifier=str(run / "model"), data=str(grown),
                                          subset="test", speaker_regex=REGEX,
                                          test_speakers="00000004"))
    assert scored.split_file == (run / "split.json").resolve()
    assert [str(f) for f in scored.files] == moved["test"]
    assert all("00000003_" in Path(f).name for f in moved["test"])
    assert scored.scores["clips"] == 6
    assert scored.scores["fid"] == pytest.approx(result.real_test["fid"], rel=1e-6)


def test_word_configs_refuse_a_rate_out_of_range_and_a_normalize_they_would_ignore(tmp_path):
    with pytest.raises(ConfigError, match=r"TrainWordClassifierConfig\.sample_rate must be a "
                                          "rate from 1000 to 384000 Hz, got 500"):
        TrainWordClassifierConfig(data="d", out=str(tmp_path / "o"), sample_rate=500)
    with pytest.raises(ConfigError, match=r"ScoreAudioConfig\.normalize must be peak"):
        ScoreAudioConfig(classifier="c", data="d", normalize="none")
    assert not (tmp_path / "o").exists()


def test_train_word_classifier_command(tmp_path, capsys):
    """The command line: flags -> config -> one call -> the report printed (and saved)."""
    data = tmp_path / "words"
    _write_words(data, speakers=3, takes=2)
    out = tmp_path / "clf"
    assert cli.main(["train-word-classifier", "--data", str(data), "--out", str(out),
                     "--speaker-regex", REGEX, "--test-speakers", "00000002",
                     "--val-fraction", "0.5", "--clip-seconds", "0.25", "--steps", "2",
                     "--batch-size", "4", "--warmup-steps", "1", "--group-size", "2",
                     "--device", "cpu"]) == 0
    printed = _last_json(capsys.readouterr().out)
    assert printed == json.loads((out / "scores.json").read_text())
    assert printed["words"] == ["noise", "speech"] and printed["test_clips"] == 4
    assert printed["real_test"]["groups"]["size"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "train-word-classifier" and config["steps"] == 2
    assert config["lr"] == 3e-3 and config["skip_labels"] == "_unknown_"     # job's defaults


def test_score_audio_command(word_run, capsys):
    data, result = word_run
    assert cli.main(["score-audio", "--classifier", str(result.model_dir), "--data", str(data),
                     "--subset", "test", "--speaker-regex", REGEX, "--group-size", "3"]) == 0
    captured = capsys.readouterr()
    printed = _last_json(captured.out)
    assert printed["accuracy"] == pytest.approx(result.test_accuracy, abs=1e-4)
    assert printed["fid"] == pytest.approx(result.real_test["fid"], rel=1e-6)
    assert printed["groups"]["count"] == 2
    assert f"the test side is the run's own, {result.out / 'split.json'} (6 file(s))" \
        in captured.err
    assert cli.main(["score-audio", "--classifier", str(result.model_dir), "--data", str(data),
                     "--speaker-regex", REGEX, "--group-size", "1"]) == 1
    assert "group size 1 must be between 2" in capsys.readouterr().err


def test_load_word_clips_quantises_pads_and_names_unknown_words(tmp_path):
    rate = 8000
    wav = torch.linspace(-0.5, 0.25, 1000)
    save_audio(tmp_path / "yes" / "a_nohash_0.wav", wav, rate)
    save_audio(tmp_path / "_unknown_" / "x_a_nohash_0.wav", wav, rate)
    pairs = words_from_folders(sorted(tmp_path.rglob("*.wav")))
    assert [w for _, w in pairs] == ["yes"]
    wavs, ids = load_word_clips(pairs, ["no", "yes"], rate, 1200, mu_law_bits=4, progress=False)
    assert wavs.shape == (1, 1200) and ids.tolist() == [1]
    assert (wavs[0, 1000:] == 0).all()                                   # zero-padded end
    assert len(wavs[0, :1000].unique()) <= 16                             # 4-bit mu-law levels
    assert wavs[0, :1000].abs().max() == pytest.approx(1.0, abs=0.05)    # peak-normalised
    cut, _ = load_word_clips(pairs, ["no", "yes"], rate, 500, mu_law_bits=0, progress=False)
    torch.testing.assert_close(cut[0], wav[:500] / 0.5, atol=1e-4, rtol=0)     # not quantised
    with pytest.raises(ValueError, match=r"words \['yes'\] are not among"):
        load_word_clips(pairs, ["no", "up"], rate, 500)


def test_train_audio_validates_on_speakers_split_off_the_training_side(tmp_path):
    data = tmp_path / "data"
    write_demo_corpus(data, n_speakers=4, clips_per_speaker=2, seconds=0.1, sample_rate=8000)
    run = train_audio(TrainAudioConfig(data=str(data), out=str(tmp_path / "run"), steps=1,
                                       test_speakers="spk1", val_fraction=0.34, preset="tiny",
                                       seq_len=64, batch_size=2, val_batches=1, device="cpu"))
    split = json.loads(run.split_file.read_text())
    speakers = {side: {f.split("_")[-2] for f in split[side]} for side in split}
    assert speakers["test"] == {"spk1"} and len(speakers["validation"]) == 1
    assert not speakers["validation"] & (speakers["train"] | speakers["test"])
    assert len(speakers["train"]) == 2
