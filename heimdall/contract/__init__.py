"""The model contract and the features it fixes: shared by training and serving, shipped in the Bento."""
