"""fine-tune jobs: effective hyperparameters, method (DPO) and OpenAI metadata (issue 16)

Revision ID: 0004_openai_compat
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('finetunejob', schema=None) as batch_op:
        batch_op.add_column(sa.Column('effective_hyperparameters', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('method', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('user_metadata', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('finetunejob', schema=None) as batch_op:
        batch_op.drop_column('user_metadata')
        batch_op.drop_column('method')
        batch_op.drop_column('effective_hyperparameters')
