"""Tasks of the seed papers (SPEC section 5): seeded generators and data sets, time-major like ``nn.LSTM``."""
from fastrnn.tasks.adding import adding_batch
from fastrnn.tasks.copying import copying_accuracy, copying_batch
from fastrnn.tasks.cycleworld import CycleWorld, StochasticWorld
from fastrnn.tasks.influence import InfluenceBalancing
from fastrnn.tasks.mnist import PixelMNIST, fixed_permutation
from fastrnn.tasks.ptb import CharPTB, CharVocab, bits_per_character

__all__ = ["adding_batch", "copying_batch", "copying_accuracy", "PixelMNIST", "fixed_permutation",
           "CharPTB", "CharVocab", "bits_per_character", "CycleWorld", "StochasticWorld", "InfluenceBalancing"]
