"""What the HE and the SE both speak: frames, messages, the client, link emulation, secrets."""
