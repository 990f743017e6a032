"""The pi0 vision-language-action model: configs, joint transformer, flow matching."""
