"""The LSTM learner and everything it needs; torch is imported only by the modules that use it.

Import the parts from their modules (``stream_lstm.learner.lstm_learner`` and so on): this face
imports nothing, so that the service can use the learner process without importing torch.
"""
