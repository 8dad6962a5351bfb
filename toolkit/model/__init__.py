"""The SVG model (Denton & Fergus 2018): VGG64 encoder/decoder, LSTM frame predictor, Gaussian LSTMs."""

from toolkit.model.lstm import GaussianLSTM, LSTM
from toolkit.model.svg import SVG, kl_divergence
from toolkit.model.vgg64 import Decoder, Encoder, VGGLayer, init_weights

__all__ = ["SVG", "Encoder", "Decoder", "VGGLayer", "LSTM", "GaussianLSTM", "init_weights", "kl_divergence"]
