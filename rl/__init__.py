"""Training: pair/SFT builders for each method, DPO/SFT on Ray Train, and the maths they rest on."""
