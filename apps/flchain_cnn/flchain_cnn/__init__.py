"""flchain-cnn: a Flower App running flchain-flwr's FedBuff on sklearn digits."""
