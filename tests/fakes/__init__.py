"""Protocol-faithful fakes of the cloud peers (Telegram Bot API, Twilio REST), as real HTTP servers."""
