"""Learning to rank: features for (request, candidate) pairs, the LightGBM LambdaRank model,
and the harness scorers that train and evaluate it."""
