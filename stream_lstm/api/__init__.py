"""The Python API: the LSTM as a river classifier (:class:`stream_lstm.LSTMClassifier`)."""
