"""Built-in key providers (AWS KMS, PKCS#11, TPM 2.0), registered by name; each imported only when used."""

from ..provider import register_builtin

register_builtin("aws-kms", "sealtensors.keys.providers.aws_kms:AwsKmsProvider")
register_builtin("pkcs11", "sealtensors.keys.providers.pkcs11:Pkcs11Provider")
register_builtin("tpm2", "sealtensors.keys.providers.tpm2:Tpm2Provider")
