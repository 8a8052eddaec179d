"""What a Mixer's features are good for without training a head: the paper's few-shot linear
evaluation (big_vision's `fewshot_lsr`) and DINO's weighted kNN, on features computed once."""
