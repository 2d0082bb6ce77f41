"""The spiking Bayesian predictive-coding network."""
