"""reviewed training files: who uploaded a fine-tune file and which second person approved it

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:20:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('trainingfile') as batch:
        batch.add_column(sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column('approved_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column('approved_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('trainingfile') as batch:
        batch.drop_column('approved_at')
        batch.drop_column('approved_by')
        batch.drop_column('created_by')
