"""The trained model: the network (head, lexical layer, encoder), its checkpoint format, and inspection."""
